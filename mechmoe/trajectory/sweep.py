"""The sweep: every chosen measure over a model's checkpoints, into one resumable store.

For each checkpoint the sweep loads the model, hashes its weights, runs the measures
that are still missing for that checkpoint, frees the model (so one model is in memory
per worker at a time, whatever the number of checkpoints) and hands the results to the
one writer (:class:`~mechmoe.trajectory.store.TrajectoryStore`). Rerunning the same
call resumes: completed (checkpoint, measure) pairs are skipped, failed checkpoints are
retried.

Executors:

- ``"local"`` (default): checkpoints one after the other in this process;
- ``"dask"``: a :class:`dask.distributed.LocalCluster` of ``workers`` single-threaded
  processes, or an existing cluster given by ``scheduler="tcp://host:8786"``. Workers
  compute and return each checkpoint's Datasets; only this process writes, in whatever
  order results arrive (the store does not depend on it).

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> from mechmoe.testing import save_tiny
>>> from mechmoe.trajectory.sources import LocalCheckpoints
>>> from mechmoe.trajectory.sweep import sweep
>>> from mechmoe.trajectory.store import open_store
>>> root = Path(tempfile.mkdtemp())
>>> for step, seed in ((100, 0), (200, 1)):
...     _ = save_tiny("llama", root / "ckpts" / f"step{step}", seed=seed)
>>> summary = sweep(
...     LocalCheckpoints(root / "ckpts"),
...     probe=["The capital of France is"],
...     measures=[ParameterNorm()],
...     out=root / "run.zarr",
... )
>>> summary.done, summary.skipped
([100, 200], [])
>>> open_store(root / "run.zarr")["param_norm"].dims
('step', 'layer')
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from mechmoe._types import LAYER, Executor
from mechmoe.core import progress
from mechmoe.core.checks import check_choice
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.provenance import options_json, probe_hash, provenance, weights_hash
from mechmoe.core.writer import prepare_output
from mechmoe.model.options import LoadKeywords, LoadOptions
from mechmoe.trajectory.sources import Checkpoint, CheckpointSource
from mechmoe.trajectory.store import (
    KIND,
    CheckpointResult,
    Status,
    TrajectoryStore,
    check_names,
)

if TYPE_CHECKING:
    import xarray as xr

    from mechmoe.model import Model


#: Model attrs recorded with each checkpoint (the store's attrs are read from the first).
_MODEL_ATTRS = (
    "adapter",
    "backend",
    "dtype",
    "is_moe",
    "top_k",
    "n_experts",
    "mechmoe_version",
    "torch_version",
    "transformers_version",
    "nnsight_version",
    "load_options",
)


@dataclass
class ParameterNorm:
    """A tiny example measure: the L2 norm of each layer's parameters (``param_norm``).

    Cheap (no forward pass), so it serves docs and tests; it shows the whole measure
    protocol of :mod:`mechmoe.trajectory.measures`.
    """

    name: str = "param_norm"
    variables: tuple[str, ...] = ("param_norm",)
    scale: float = 1.0

    def applies_to(self, model: Model) -> bool:
        return True

    def config(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def __call__(self, model: Model, probe: Any) -> xr.Dataset:
        import numpy as np
        import torch
        import xarray as xr

        layers = model._layers
        norms = []
        with torch.no_grad():
            for layer in layers:
                # numpy's float64 sum does not depend on torch's thread count
                sq = sum(
                    float(np.square(p.detach().cpu().double().numpy()).sum())
                    for p in layer.parameters()
                )
                norms.append(self.scale * sq**0.5)
        return xr.Dataset(
            {"param_norm": (LAYER, np.asarray(norms, dtype=np.float64))},
            coords={LAYER: np.arange(len(layers), dtype=np.int64)},
            attrs=provenance(model, probe=probe, options=self.config()),
        )


# ---- one checkpoint (runs in a worker) ---------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _trace(exc: BaseException, lines: int = 20) -> str:
    return "".join(traceback.format_exception(exc)[-lines:])


def _free() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_checkpoint(
    checkpoint: Checkpoint,
    measures: Sequence[Any],
    probe: Any,
    *,
    options: LoadOptions | None = None,
    known_hashes: Mapping[str, int] | None = None,
    threads: int | None = None,
    source: CheckpointSource | None = None,
) -> CheckpointResult:
    """Load one checkpoint, run ``measures`` on it and free it; never raises for a bad checkpoint.

    The checkpoint is loaded with ``options`` (default :class:`LoadOptions`) through
    ``source.load`` (the sweep passes its source), or :meth:`Checkpoint.load` when no
    source is given.

    A load failure or a failing measure is returned in ``error`` (with a traceback
    summary); the measures that succeeded are kept. When the weights hash is in
    ``known_hashes`` (hash → step) with an earlier step, nothing is measured and the
    result is marked ``duplicate``.
    """
    start = time.perf_counter()
    opts = options if options is not None else LoadOptions()
    if threads:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return measure_checkpoint(
                checkpoint,
                measures,
                probe,
                options=opts,
                known_hashes=known_hashes,
                source=source,
            )
        finally:
            torch.set_num_threads(before)
    label = checkpoint.label or str(checkpoint.step)
    try:
        model = source.load(checkpoint, opts) if source is not None else checkpoint.load(opts)
    except Exception as exc:
        _free()
        return CheckpointResult(
            checkpoint,
            error=f"could not load {label}: {_one_line(exc)}",
            traceback=_trace(exc),
            seconds=time.perf_counter() - start,
        )
    result = CheckpointResult(checkpoint)
    try:
        # provenance() reads step and tokens from the handle
        model.step = checkpoint.step  # type: ignore[attr-defined]
        model.tokens = checkpoint.tokens  # type: ignore[attr-defined]
        if checkpoint.revision is None:
            model.revision = checkpoint.label
        result.weights_hash = weights_hash(model)
        earlier = (known_hashes or {}).get(result.weights_hash)
        if earlier is not None and earlier < checkpoint.step:
            result.duplicate = True
            return result
        attrs = provenance(model, weights=result.weights_hash)
        result.model_attrs = {k: attrs[k] for k in _MODEL_ATTRS if k in attrs}
        import torch

        # CPU reductions add in an order set by the thread count: recorded with the results
        result.model_attrs["torch_threads"] = torch.get_num_threads()
        not_applicable = []
        for measure in measures:
            if not measure.applies_to(model):
                not_applicable.append(measure.name)
                continue
            try:
                ds = measure(model, probe)
                check_names(ds)
                result.datasets[measure.name] = ds
            except Exception as exc:
                if result.error is None:
                    result.error = f"measure {measure.name!r} failed on {label}: {_one_line(exc)}"
                    result.traceback = _trace(exc)
                    result.failed_measure = measure.name
        result.not_applicable = tuple(not_applicable)
        return result
    finally:
        del model
        _free()
        result.seconds = time.perf_counter() - start


# ---- the sweep ---------------------------------------------------------------------


@dataclass
class SweepSummary:
    """What a sweep did, checkpoint by checkpoint (steps)."""

    store: Path
    done: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    duplicates: dict[int, int | None] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    #: steps whose stored results were found damaged, with what was recomputed
    repaired: dict[int, str] = field(default_factory=dict)
    #: torch threads every checkpoint of this run was measured with
    threads: int | None = None

    @property
    def selected(self) -> int:
        return len(self.labels)

    def rows(self) -> list[tuple[int, str, Status, str]]:
        """``(step, label, status, detail)`` per selected checkpoint, sorted by step."""
        out = []
        for step in sorted(self.labels):
            if step in self.failed:
                status, detail = Status.FAILED, self.failed[step]
            elif step in self.duplicates:
                orig = self.duplicates[step]
                status, detail = (
                    Status.DUPLICATE,
                    f"same weights as step {orig}" if orig is not None else "",
                )
            elif step in self.done:
                status, detail = Status.DONE, f"{self.seconds.get(step, 0.0):.1f} s"
                if step in self.repaired:
                    detail += f" (recomputed damaged {self.repaired[step]})"
            else:
                status, detail = Status.SKIPPED, "already in the store"
            out.append((step, self.labels[step], status, detail))
        return out


def _measure_objects(measures: Sequence[Any]) -> list[Any]:
    objs: list[Any] = []
    for m in measures:
        if isinstance(m, str):
            from mechmoe.trajectory.measures import get_measure

            m = get_measure(m)
        objs.append(m)
    names = [m.name for m in objs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidInputError(f"measure {dup[0]!r} is listed twice; list each measure once")
    if not objs:
        raise InvalidInputError("no measures to run; name at least one")
    return objs


def _probe_object(probe: Any) -> tuple[Any, str]:
    if isinstance(probe, (str, os.PathLike)):
        from mechmoe.probes import load_probe

        return load_probe(probe), os.fspath(probe)
    names = getattr(probe, "relation_names", None)
    return probe, ",".join(names) if names is not None else "prompts"


def _device_kind(device: str | None, device_map: Any) -> str:
    if device_map is not None:
        return "device_map"
    text = str(device or "cpu")
    return text.split(":", 1)[0]


def run_config(
    source: CheckpointSource,
    *,
    name: str | None,
    probe: Any,
    probe_label: str,
    options: LoadOptions,
) -> dict[str, Any]:
    """The fields recorded in (and compared against) a store's ``config.json``.

    Of the load options, those that change the numbers a store holds: ``dtype``, the
    device kind (``cpu``, ``cuda`` or ``device_map``) and ``tokenizer`` when one is given
    (from :meth:`LoadOptions.describe`; the keys stores have always had, so a store written
    by an earlier mechmoe resumes). The backend is not among them (backends agree to
    1e-5; each checkpoint's record names its own, with all its load options).
    """
    described = source.describe()
    default = described.get("repo") or Path(str(described.get("path", "model"))).name
    load = options.describe()
    config = {
        "model": name or default,
        "source": described,
        "probe": probe_label,
        "probe_hash": probe_hash(probe),
        "probe_items": len(probe),
        "dtype": str(load["dtype"]),
        "device": _device_kind(load["device"], load["device_map"]),
    }
    if load["tokenizer"] is not None:
        config["tokenizer"] = str(load["tokenizer"])
    return config


def sweep(
    source: CheckpointSource,
    *,
    probe: Any,
    measures: Sequence[Any],
    out: str | os.PathLike[str],
    name: str | None = None,
    executor: Executor = "local",
    workers: int = 1,
    scheduler: str | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    options: LoadOptions | None = None,
    **keywords: Unpack[LoadKeywords],
) -> SweepSummary:
    """Run ``measures`` on every checkpoint of ``source`` into the store ``out``.

    Parameters
    ----------
    source
        A :class:`~mechmoe.trajectory.sources.CheckpointSource` (hub revisions, a local
        folder or manifest), already carrying its selection.
    probe
        A probe set name or path (:func:`mechmoe.probes.load_probe`), a ProbeSet, or a
        list of prompts; every measure gets the same one.
    measures
        Measure objects or registry names (:func:`mechmoe.trajectory.measures.get_measure`).
    out
        The store folder (``run.zarr``). An existing store of the same config is extended
        (resumed); a store of another config is refused naming the field that differs;
        ``overwrite=True`` starts it over.
    name
        The model name recorded in the store (default: the repo id or folder name).
    executor, workers, scheduler
        ``"local"``, or ``"dask"`` with ``workers`` local processes, or an existing
        cluster at ``scheduler`` (then ``executor`` is ``"dask"`` whatever was given).
    options, **keywords
        How each checkpoint is loaded: a :class:`~mechmoe.model.options.LoadOptions`, and
        its fields as keywords replacing the value's (``dtype="bfloat16"``,
        ``device_map="auto"``, ``tokenizer=`` for checkpoints saved without one,
        ``backend="transformerlens"``, …). Each checkpoint sets its own revision. The
        store's config records dtype, device kind and tokenizer (a store is extended only
        with the same); each checkpoint's record holds all the options it was loaded
        with. Results agree across backends (to 1e-5), so a store may be extended with
        either; the store's ``backend`` attr is the first checkpoint's.
    threads
        torch threads each checkpoint is measured with, on every executor. Default: the
        count the store's checkpoints were measured with, or, in a new store, torch's
        own setting in this process. CPU reductions add in an order set by the thread
        count, so one count per store keeps a Dask sweep, a local one and a resumed one
        equal to the last bit; each checkpoint records its count (``torch_threads``).

    Returns
    -------
    SweepSummary
        Steps done, skipped (already complete), failed (with the error), duplicates.

    Before any work the store is verified file by file (sizes and CRC-32C): a damaged
    (checkpoint, measure) pair counts as missing and is recomputed; a damaged checkpoint
    this run does not select is recorded as a failure. Lost metadata is restored from
    the parts' records. Only one process may write a store at a time.
    """
    t0 = time.perf_counter()
    if scheduler:
        executor = "dask"
    check_choice(executor, Executor, name="executor")
    if workers < 1:
        raise InvalidInputError(f"workers={workers}: use at least one worker")
    if executor == "local" and workers != 1:
        raise InvalidInputError(
            f"workers={workers} needs executor='dask' (the local executor runs one checkpoint at a time)"
        )
    opts = LoadOptions.build(options, **keywords)
    if opts.revision is not None:
        raise InvalidInputError(
            f"revision={opts.revision!r}: a sweep loads each checkpoint at its own revision; "
            "choose checkpoints with the source's selection instead"
        )
    measure_objs = _measure_objects(measures)
    probe_obj, probe_label = _probe_object(probe)
    prepare_output(out, kind=KIND, overwrite=overwrite, append=True)  # fail before any work
    ckpts = source.checkpoints()
    config = run_config(source, name=name, probe=probe_obj, probe_label=probe_label, options=opts)
    mconf = {m.name: _config_of(m) for m in measure_objs}
    store = TrajectoryStore.create_or_open(out, config, mconf, overwrite=overwrite, lock=True)
    try:
        return _sweep_into(
            store, source, ckpts, measure_objs, probe_obj, config, t0,
            executor=executor, workers=workers, scheduler=scheduler, threads=threads,
            opts=opts,
        )  # fmt: skip
    finally:
        store.close()


def _store_threads(store: TrajectoryStore) -> int | None:
    """The torch thread count most of the store's checkpoints were measured with."""
    from collections import Counter

    counts = Counter(
        int(st.record["model_attrs"]["torch_threads"])
        for st in store.index.steps.values()
        if "torch_threads" in st.record.get("model_attrs", {})
    )
    return counts.most_common(1)[0][0] if counts else None


def _sweep_into(
    store: TrajectoryStore,
    source: CheckpointSource,
    ckpts: list[Checkpoint],
    measure_objs: list[Any],
    probe_obj: Any,
    config: dict[str, Any],
    t0: float,
    *,
    executor: str,
    workers: int,
    scheduler: str | None,
    threads: int | None,
    opts: LoadOptions,
) -> SweepSummary:
    """The sweep once its store is open (and locked): decide what to compute, compute, write."""
    from mechmoe.trajectory.store import PLAIN_ENV

    if not os.environ.get(PLAIN_ENV):
        store.verify("full")  # every file against its checksum: damage is recomputed below
    store.tidy()
    store.sync_root(verify=True)  # a root cut short by a crash, or damaged: redone
    if threads is None:
        import torch

        # one thread count for every checkpoint, whatever the executor: the store's own if
        # it has one, so a resumed or Dask run adds numbers that match to the last bit
        threads = _store_threads(store) or torch.get_num_threads()
    summary = SweepSummary(
        store=store.path, ignored=list(getattr(source, "ignored", [])), threads=threads
    )
    selected = {c.step for c in ckpts}
    todo: list[tuple[Checkpoint, list[Any]]] = []
    for c in ckpts:
        summary.labels[c.step] = c.label or str(c.step)
        if c.step in store.index.duplicates:
            summary.duplicates[c.step] = store.index.original_of(c.step)
            continue
        damaged = store.index.damaged_measures(c.step)
        if damaged:
            summary.repaired[c.step] = ", ".join(sorted(damaged))
        done = store.index.done(c.step)
        missing = [m for m in measure_objs if m.name not in done]
        if missing:
            todo.append((c, missing))
        else:
            summary.skipped.append(c.step)
    for step in store.index.damaged_steps():
        if step in selected:
            continue
        # damaged, but not in this run's selection: recorded, not recomputed
        found = [str(d) for d in store.index.damage() if d.step == step]
        rec = store.index.steps[step].record
        ckpt = Checkpoint(
            step, tokens=rec.get("tokens"), revision=rec.get("revision"), label=rec.get("label", "")
        )
        error = (
            f"its stored results are damaged ({found[0] if found else 'unreadable'}); this run "
            "does not select it, so run again with it selected to recompute them"
        )
        store.record_failure(ckpt, error)
        summary.labels[step] = ckpt.label or str(step)
        summary.failed[step] = error
    title = f"sweep {config['model']}"
    with progress.task(title, total=len(todo)) as bar:

        def record(res: CheckpointResult) -> None:
            step = res.checkpoint.step
            status = store.write(res)
            summary.seconds[step] = res.seconds
            if status == Status.DUPLICATE:
                summary.duplicates[step] = store.index.original_of(step)
            elif status == Status.FAILED:
                summary.failed[step] = str(store.index.failures.get(step, {}).get("error"))
                if res.datasets and set(res.datasets) <= store.index.done(step):
                    summary.done.append(step)  # the measures that succeeded are stored
            else:
                summary.done.append(step)
            # a later step stored earlier may just have become a duplicate of this one
            for s in list(summary.done):
                if s in store.index.duplicates:
                    summary.done.remove(s)
                    summary.duplicates[s] = store.index.original_of(s)
            bar.update(
                description=f"{title}: {summary.labels[step]} {status} in {res.seconds:.1f} s"
            )
            bar.advance()

        if executor == "local":
            for c, missing in todo:
                res = measure_checkpoint(
                    c,
                    missing,
                    probe_obj,
                    options=opts,
                    known_hashes=_known(store),
                    threads=threads,
                    source=source,
                )
                record(res)
        else:
            _run_dask(
                todo,
                probe_obj,
                store,
                record,
                workers,
                scheduler,
                threads,
                opts,
                source,
            )
    summary.done.sort()
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _config_of(measure: Any) -> dict[str, Any]:
    import json

    return json.loads(options_json(measure.config()))


def _known(store: TrajectoryStore) -> dict[str, int]:
    out: dict[str, int] = {}
    for step, h in sorted(store.index.hashes().items()):
        out.setdefault(h, step)
    return out


#: Variables Dask's nanny sets to 1 in its workers (and, as a side effect, in this process).
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextlib.contextmanager
def _worker_environment() -> Iterator[None]:
    """Start local workers that compute like this process, and leave its environment alone.

    Dask's nanny sets ``OMP_NUM_THREADS=1`` (and MKL's, OpenBLAS's) for its workers by
    writing them into this process's ``os.environ``, where they stay: every later
    subprocess would then run single-threaded. Workers here get this process's own
    values (their torch thread count is set per task), and the environment is restored.
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    for key in _THREAD_VARIABLES:
        env.pop(key, None)
    keys = set(env) | set(_THREAD_VARIABLES)
    saved = {k: os.environ.get(k) for k in keys}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_dask(
    todo: list[tuple[Checkpoint, list[Any]]],
    probe: Any,
    store: TrajectoryStore,
    record: Any,
    workers: int,
    scheduler: str | None,
    threads: int,
    options: LoadOptions,
    source: CheckpointSource,
) -> None:
    if not todo:
        return
    import logging

    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise InvalidInputError(
                f"cannot reach the Dask scheduler at {scheduler!r} ({_one_line(exc)}); "
                "check the address and that the scheduler runs"
            ) from None
    else:
        with _worker_environment():
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        client = Client(cluster)
    try:
        known = _known(store)
        futures = {}
        for c, missing in todo:
            fut = client.submit(
                measure_checkpoint,
                c,
                missing,
                probe,
                options=options,
                source=source,
                known_hashes=known,
                threads=threads,
                pure=False,
            )
            futures[fut] = c
        for fut in as_completed(list(futures)):
            c = futures.pop(fut)
            try:
                res = fut.result()
            except Exception as exc:  # the worker died (out of memory, killed)
                res = CheckpointResult(
                    c, error=f"worker lost on {c.label}: {_one_line(exc)}", traceback=_trace(exc)
                )
            fut.release()
            record(res)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


__all__ = [
    "CheckpointResult",
    "ParameterNorm",
    "SweepSummary",
    "measure_checkpoint",
    "run_config",
    "sweep",
]
