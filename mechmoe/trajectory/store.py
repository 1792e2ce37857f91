"""The trajectory store: one model's measures over its checkpoints, in one resumable folder.

A store is a folder (``run.zarr``) written only through :mod:`mechmoe.core.writer`::

    run.zarr/
      .mechmoe.json                     marker: a mechmoe "trajectory"
      config.json                       the run's config (model, source, probe, dtype, device)
      measures/NAME.json                each measure's options, written when first run
      checkpoints/step_000000001000/    one folder per checkpoint, holding one part per run:
        hit+neuron_lpi/                   the measures that run computed, renamed into place
          checkpoint.json                 step, tokens, revision, weights hash, model attrs,
                                          the run's config and options, and the size and
                                          CRC-32C of every file of the part
          hit.zarr  neuron_lpi.zarr       each measure's Dataset (no step dim): zarr v3,
                                          one chunk per variable, zstd + crc32c codecs
      duplicates/step_000000001200.json a checkpoint whose weights equal an earlier one's
      failures/step_000000001100.json   a checkpoint (or measure) that failed: error, traceback
      zarr.json  VARIABLE/ ...          the root: the whole Dataset along step, for plain
      root.json                         xarray (see :mod:`mechmoe.trajectory.root`)

Every part is written to a hidden temporary and renamed into place, so a reader sees a
checkpoint's results of a run completely or not at all, whatever happens to the writer
(``SIGKILL`` included); readers skip dot-names. Completion is tracked per (checkpoint,
measure), so adding a measure or checkpoints later computes only what is missing.

Integrity: every chunk carries a CRC-32C (zarr checks it on every read) and every part's
record lists the size and checksum of each of its files, so a deleted, cut or garbled
file is found (:meth:`TrajectoryStore.verify`) and named (checkpoint, measure,
variable); :func:`open_store` refuses a damaged store (or leaves the damaged steps out),
and the next sweep recomputes exactly the damaged (checkpoint, measure) pairs. Lost
metadata (``config.json``, ``measures/NAME.json``) is restored from the parts' records.

The store is five modules: :mod:`~mechmoe.trajectory.layout` (names, records, encodings),
:mod:`~mechmoe.trajectory.store_index` (what is there and what is damaged),
:mod:`~mechmoe.trajectory.reading` (:func:`open_store`, the root's plan, the netCDF
export), :mod:`~mechmoe.trajectory.root` (the root) and this one (the writer). Every
public name is importable from here.

:func:`open_store` reads it all back as one :class:`xarray.Dataset` along ``step``.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> import numpy as np, xarray as xr
>>> from mechmoe.trajectory.sources import Checkpoint
>>> from mechmoe.trajectory.store import CheckpointResult, TrajectoryStore, open_store
>>> path = Path(tempfile.mkdtemp()) / "run.zarr"
>>> store = TrajectoryStore.create_or_open(
...     path, {"model": "demo"}, {"demo_measure": {"scale": 1}}
... )
>>> for step in (20, 10):
...     ds = xr.Dataset({"score": ("layer", np.full(2, step / 10))}, coords={"layer": [0, 1]})
...     res = CheckpointResult(Checkpoint(step, tokens=step * 1e6, label=f"step{step}"),
...                            weights_hash=f"h{step}", datasets={"demo_measure": ds})
...     print(store.write(res))
done
done
>>> run = open_store(path)
>>> run["score"].dims, run["step"].values.tolist(), run["tokens"].values.tolist()
(('step', 'layer'), [10, 20], [10000000.0, 20000000.0])
>>> xr.open_zarr(path)["score"].values.tolist() == run["score"].values.tolist()
True
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechmoe.core.errors import DamagedFileError, InvalidInputError
from mechmoe.core.provenance import as_attrs
from mechmoe.core.writer import Output, file_manifest, prepare_output, recognize
from mechmoe.trajectory.layout import (
    CHECKPOINTS,
    CONFIG,
    DUPLICATES,
    FAILURES,
    FORMAT,
    KIND,
    MEASURE_NAME,
    MEASURES,
    PAUSE_ENV,
    RECORD,
    RESERVED_NAMES,
    Status,
    Verify,
    check_names,
    is_plain,
    json_diff,
    normal,
    record_checksum,
    step_name,
    to_json,
    try_json,
    write_zarr,
)
from mechmoe.trajectory.layout import PLAIN_ENV as PLAIN_ENV  # the benchmark's switch
from mechmoe.trajectory.reading import (
    export_netcdf,
    open_store,
    read_config,
    read_measure_configs,
    root_plan,
)
from mechmoe.trajectory.repair import discard_parts, supersede, tidy_store
from mechmoe.trajectory.root import sync
from mechmoe.trajectory.sources import Checkpoint
from mechmoe.trajectory.store_index import (
    Damage,
    StepState,
    StoredPart,
    StoreIndex,
    scan,
)

# ---- what a worker hands the writer ------------------------------------------------


@dataclass
class CheckpointResult:
    """The results of one checkpoint, as a worker returns them to the one writer.

    ``datasets`` maps measure name → Dataset (without the step dim); ``not_applicable``
    names measures that do not apply to this model (e.g. routing on a dense model);
    ``error`` is set when the checkpoint failed to load or a measure failed (then
    ``datasets`` holds the measures that succeeded). ``duplicate`` is set when the worker
    found the weights equal to an already measured checkpoint's and measured nothing.
    """

    checkpoint: Checkpoint
    weights_hash: str | None = None
    datasets: dict[str, Any] = field(default_factory=dict)
    not_applicable: tuple[str, ...] = ()
    model_attrs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    failed_measure: str | None = None
    duplicate: bool = False
    seconds: float = 0.0


# ---- the writer --------------------------------------------------------------------


class TrajectoryStore:
    """Reader and (single) writer of a trajectory store.

    Build a writer with :meth:`create_or_open`; a reader needs only the path
    (:func:`open_store` is the usual way to read).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        _output: Output | None = None,
        verify: Verify = "none",
    ) -> None:
        self.path = Path(path).expanduser()
        self._out = _output
        self._replace: Output | None = None
        self._lock: contextlib.ExitStack | None = None
        # the config and measure options of a store open for writing (only it changes them)
        self._config: dict[str, Any] | None = None
        self._options: dict[str, dict[str, Any]] | None = None
        self.index = scan(self.path, verify) if self.path.is_dir() else StoreIndex()

    # -- opening -------------------------------------------------------------------
    @classmethod
    def create_or_open(
        cls,
        path: str | os.PathLike[str],
        config: Mapping[str, Any],
        measures: Mapping[str, Mapping[str, Any]],
        *,
        overwrite: bool = False,
        lock: bool = False,
    ) -> TrajectoryStore:
        """Open ``path`` to add results, creating it (or, with ``overwrite``, replacing it).

        ``config`` is the run's config (everything that changes results except the
        measures); ``measures`` maps each measure of this run to its options. An existing
        store must have the same config and the same options for the measures both have;
        otherwise this raises naming the first field that differs. New measures are added.
        A lost or unreadable ``config.json`` or ``measures/NAME.json`` is restored from the
        parts' records (after the same comparison). A store written by an earlier mechmoe
        (format 1) is upgraded in place: its parts get checksums; nothing is recomputed.
        Nothing is written unless the checks pass.

        With ``lock``, the store is held for this process until :meth:`close`; another
        process that tries is refused at once, naming this one.
        """
        for name in measures:
            if not MEASURE_NAME.match(name):
                raise InvalidInputError(
                    f"measure name {name!r} cannot name a store part; use letters, digits, _ or -"
                )
        config = {"format": FORMAT, **normal(config)}
        mconf = {name: normal(opts) for name, opts in measures.items()}
        out = prepare_output(path, kind=KIND, overwrite=overwrite, append=True)
        exists = out.path.is_dir() and recognize(out.path) == KIND
        held = contextlib.ExitStack()
        try:
            if lock and exists:
                held.enter_context(out.lock())
            if overwrite or not exists:
                with out.writing() as tmp:
                    (tmp / CONFIG).write_text(to_json(config), encoding="utf-8")
                    (tmp / MEASURES).mkdir()
                    for name, opts in mconf.items():
                        (tmp / MEASURES / f"{name}.json").write_text(
                            to_json(opts), encoding="utf-8"
                        )
                held.close()
                out = prepare_output(path, kind=KIND, append=True)
                if lock:
                    held.enter_context(out.lock())
                store = cls(out.path, _output=out)
            else:
                store = cls(out.path, _output=out)
                store._open_existing(config, mconf)
        except BaseException:
            held.close()
            raise
        store._lock = held
        store._config = config
        store._options = store.measure_configs()
        return store

    def _open_existing(self, config: dict[str, Any], mconf: dict[str, dict[str, Any]]) -> None:
        out = self._output()
        stored, problem = try_json(self.path / CONFIG)
        records = [
            p.record
            for st in self.index.steps.values()
            for p in st.parts
            if p.record is not None and "" not in p.damage
        ]
        if problem is not None or not isinstance(stored, dict):
            # restore it from the parts' records (each keeps the config it was made with)
            kept = [r["config"] for r in records if isinstance(r.get("config"), dict)]
            base = kept[0] if kept else config
            for other in kept[1:]:
                found = json_diff(base, other, "")
                if found is not None:
                    raise DamagedFileError(
                        f"{self.path / CONFIG} is lost and the checkpoints' records disagree "
                        f"on {found[0]} ({found[1]!r} and {found[2]!r}); choose another --out"
                    )
            found = json_diff(base, config, "")
            if found is not None:
                raise _mismatch(self.path, *found)
            with self._replacing().child(CONFIG) as tmp:
                tmp.write_text(to_json(config), encoding="utf-8")
            stored = config
        if stored.get("format") == 1:
            found = json_diff({**stored, "format": FORMAT}, config, "")
            if found is not None:
                raise _mismatch(self.path, *found)
            self._upgrade(config)
            stored = config
        found = json_diff(stored, config, "")
        if found is not None:
            raise _mismatch(self.path, *found)
        old = self.measure_configs()
        recorded: dict[str, Any] = {}
        for rec in records:
            for name, opts in (rec.get("options") or {}).items():
                recorded.setdefault(name, opts)
        for name, opts in mconf.items():
            known = old.get(name, recorded.get(name))
            if known is not None:
                found = json_diff(known, opts, f"measures.{name}")
                if found is not None:
                    raise _mismatch(self.path, *found)
        # write what is new, restore what was lost
        wanted = {**{n: o for n, o in recorded.items() if n not in old}, **mconf}
        for name, opts in wanted.items():
            if name in old:
                continue
            target = self.path / MEASURES / f"{name}.json"
            writer = self._replacing() if os.path.lexists(target) else out
            with writer.child(f"{MEASURES}/{name}.json") as tmp:
                tmp.write_text(to_json(opts), encoding="utf-8")

    def close(self) -> None:
        """Release the lock taken by :meth:`create_or_open` (``lock=True``)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> TrajectoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The run config recorded when the store was created."""
        return read_config(self.path)

    def measure_configs(self) -> dict[str, dict[str, Any]]:
        """Options of every measure ever run into this store, by name (readable ones)."""
        return read_measure_configs(self.path)

    def refresh(self, verify: Verify | None = None) -> StoreIndex:
        """Scan the store again (``verify``: ``"full"`` reads every checksum)."""
        self.index = scan(self.path, verify or self.index.verified)
        return self.index

    def verify(self, level: Verify = "full") -> list[Damage]:
        """Check every file of every part against its record; the damage found.

        ``"full"`` reads every file and compares its CRC-32C, ``"quick"`` compares sizes
        only. Also checks that ``config.json``, each measure's options and the duplicate
        and failure records can be read.
        """
        return self.refresh(level).damage()

    # -- writing -------------------------------------------------------------------
    def _output(self) -> Output:
        if self._out is None:
            raise RuntimeError("this TrajectoryStore was opened for reading only")
        return self._out

    def _replacing(self) -> Output:
        if self._replace is None:
            self._replace = prepare_output(self.path, kind=KIND, overwrite=True, append=True)
        return self._replace

    def write(self, result: CheckpointResult) -> Status:
        """Add one checkpoint's results; returns :class:`Status` done, duplicate or failed.

        Results of a checkpoint whose weights equal those of an earlier measured step are
        not stored: the checkpoint is recorded as a duplicate. If a later step with the
        same weights was stored first (workers finish in any order), that one becomes the
        duplicate, so the final store does not depend on the order results arrive in.
        Results for a checkpoint whose stored weights differ are refused (a failure) and
        change nothing else. A measure stored damaged at this step is replaced. The root
        is brought up to date before this returns.
        """
        ckpt, step = result.checkpoint, result.checkpoint.step
        index = self.index
        status = Status.FAILED if result.error else Status.DONE
        h = result.weights_hash
        refused = False
        if h is not None and step in index.steps and step not in index.duplicates:
            known = index.steps[step].record.get("weights_hash")
            if known and known != h:
                result = CheckpointResult(
                    ckpt,
                    weights_hash=h,
                    error=(
                        f"the weights of {ckpt.label or step} changed since the store measured "
                        f"them (hash {known} → {h}); measure it into a new store"
                    ),
                )
                status, refused = Status.FAILED, True
        same = sorted(s for s, hh in index.hashes().items() if h and hh == h and s != step)
        if not result.error and (result.duplicate or (same and same[0] < step)):
            self._write_duplicate(ckpt, h)
            self._clear_failure(step)
            self.sync_root()
            return Status.DUPLICATE
        if result.datasets or result.not_applicable:
            self._write_part(result)
        if result.error:
            self._write_failure(result)
        else:
            self._clear_failure(step)
        # A later step stored first with these weights is a duplicate of this one, but only
        # when this step's own results were stored with them (never on a refusal).
        if not refused and h and index.steps.get(step, StepState()).record.get("weights_hash") == h:
            for later in (s for s in same if s > step):
                rec = index.steps[later].record
                self._write_duplicate(
                    Checkpoint(
                        later,
                        tokens=rec.get("tokens"),
                        revision=rec.get("revision"),
                        label=rec.get("label", ""),
                    ),
                    h,
                )
                discard_parts(self.path, self.index, later)
        self.sync_root()
        return status

    def _write_part(self, result: CheckpointResult) -> None:
        ckpt = result.checkpoint
        names = sorted(result.datasets)
        claims = sorted({*names, *result.not_applicable})
        for ds in result.datasets.values():
            check_names(ds)
        record: dict[str, Any] = {
            "step": ckpt.step,
            "tokens": ckpt.tokens,
            "revision": ckpt.revision or ckpt.label,
            "label": ckpt.label,
            "weights_hash": result.weights_hash,
            "measures": names,
            "not_applicable": sorted(result.not_applicable),
            "model_attrs": dict(sorted(as_attrs(result.model_attrs).items())),
        }
        plain = is_plain()
        if not plain:
            options = self._options if self._options is not None else self.measure_configs()
            record["config"] = self._config or self.config()
            record["options"] = {n: options[n] for n in claims if n in options}
        folder = self.path / CHECKPOINTS / step_name(ckpt.step)
        name, replace = self._part_name(ckpt.step, claims)
        rel = f"{CHECKPOINTS}/{step_name(ckpt.step)}/{name}"
        writer = self._replacing() if replace else self._output()
        with writer.child(rel, folder=True) as tmp:
            for measure in names:
                write_zarr(result.datasets[measure], tmp / f"{measure}.zarr", plain=plain)
            if not plain:
                record["files"] = file_manifest(tmp)
                record["checksum"] = record_checksum(record)
            (tmp / RECORD).write_text(to_json(record), encoding="utf-8")
            pause = float(os.environ.get(PAUSE_ENV) or 0)
            if pause > 0:
                time.sleep(pause)
        state = self.index.steps.setdefault(ckpt.step, StepState())
        state.parts = [p for p in state.parts if p.path != folder / name]
        state.parts.append(StoredPart(folder / name, json.loads(to_json(record)), set(claims)))
        supersede(self.path, self._replacing, self.index, ckpt.step, set(claims), folder / name)

    def _part_name(self, step: int, claims: list[str]) -> tuple[str, bool]:
        """A folder name for a new part, and whether it replaces a folder of that name.

        A folder of the same name is replaced when nothing of it would be lost (it is
        damaged, or everything it holds is in the new part); else a new name is used.
        """
        base = "+".join(claims)
        state = self.index.steps.get(step, StepState())
        existing = {p.path.name: p for p in state.parts}
        folder = self.path / CHECKPOINTS / step_name(step)
        for k in range(1, 1000):
            name = base if k == 1 else f"{base}~{k}"
            part = existing.get(name)
            if part is None and not os.path.lexists(folder / name):
                return name, False
            if part is not None and part.good <= set(claims):
                return name, True
        raise RuntimeError(f"too many parts named {base!r} at step {step}")

    def _write_duplicate(self, ckpt: Checkpoint, weights_hash: str | None) -> None:
        rec = {
            "step": ckpt.step,
            "tokens": ckpt.tokens,
            "revision": ckpt.revision or ckpt.label,
            "label": ckpt.label,
            "weights_hash": weights_hash,
        }
        if ckpt.step not in self.index.duplicates:
            rel = f"{DUPLICATES}/{step_name(ckpt.step)}.json"
            writer = self._replacing() if os.path.lexists(self.path / rel) else self._output()
            with writer.child(rel) as tmp:
                tmp.write_text(to_json(rec), encoding="utf-8")
        self.index.duplicates[ckpt.step] = rec

    def _write_failure(self, result: CheckpointResult) -> None:
        ckpt = result.checkpoint
        rec = {
            "step": ckpt.step,
            "label": ckpt.label,
            "revision": ckpt.revision or ckpt.label,
            "measure": result.failed_measure,
            "error": result.error,
            "traceback": result.traceback,
        }
        rel = f"{FAILURES}/{step_name(ckpt.step)}.json"
        exists = ckpt.step in self.index.failures or os.path.lexists(self.path / rel)
        out = self._replacing() if exists else self._output()
        with out.child(rel) as tmp:
            tmp.write_text(to_json(rec), encoding="utf-8")
        self.index.failures[ckpt.step] = rec

    def record_failure(self, checkpoint: Checkpoint, error: str) -> None:
        """Record that ``checkpoint`` failed with ``error`` (e.g. its stored part is damaged)."""
        self._write_failure(CheckpointResult(checkpoint, error=error))
        self.sync_root()

    def _clear_failure(self, step: int) -> None:
        path = self.path / FAILURES / f"{step_name(step)}.json"
        if step in self.index.failures or os.path.lexists(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self.index.failures.pop(step, None)

    def tidy(self) -> None:
        """Put the store in order after a writer was cut short or files were damaged.

        Removes parts left under steps recorded as duplicates (a writer killed mid-swap),
        removes copies of measures that an intact later part holds again (a writer killed
        while replacing a damaged part), and replaces unreadable duplicate and failure
        records (they are redone by the sweep).
        """
        tidy_store(self.path, self.index, self._replacing)

    def _upgrade(self, config: dict[str, Any]) -> None:
        """Rewrite a format-1 store's parts with checksums and records (nothing recomputed)."""
        import xarray as xr

        self._config = config
        options = self.measure_configs()
        for _, state in sorted(self.index.steps.items()):
            for part in list(state.parts):
                rec = part.record
                if rec is None or "files" in rec:
                    continue
                datasets = {
                    name: xr.open_zarr(part.path / f"{name}.zarr", consolidated=False).load()
                    for name in rec.get("measures", [])
                }
                new = dict(rec)
                new["config"] = config
                new["options"] = {n: options[n] for n in part.claims if n in options}
                rel = part.path.relative_to(self.path).as_posix()
                with self._replacing().child(rel, folder=True) as tmp:
                    for name, ds in datasets.items():
                        write_zarr(ds.drop_encoding(), tmp / f"{name}.zarr")
                    new["files"] = file_manifest(tmp)
                    new["checksum"] = record_checksum(new)
                    (tmp / RECORD).write_text(to_json(new), encoding="utf-8")
                part.record = json.loads(to_json(new))
        with self._replacing().child(CONFIG) as tmp:
            tmp.write_text(to_json(config), encoding="utf-8")

    # -- the root: the whole Dataset for plain xarray --------------------------------
    def sync_root(self, *, verify: bool = False) -> None:
        """Bring the root (``xr.open_zarr(store)``) up to date with the parts.

        With ``verify``, the root's chunks are checked against their CRC-32C first, and a
        damaged root is rewritten from the parts.
        """
        if is_plain() or self._out is None:
            return
        plan = root_plan(self.path, self.index, self._config, self._options)
        sync(self.path, plan, self._replacing(), RESERVED_NAMES, verify=verify)


def _mismatch(path: Path, name: str, old: Any, new: Any) -> InvalidInputError:
    return InvalidInputError(
        f"the trajectory store {str(path)!r} was made with {name}={old!r} but this run has "
        f"{name}={new!r}; rerun with the store's setting, pass --overwrite to start over, "
        "or choose another --out"
    )


__all__ = [
    "KIND",
    "CheckpointResult",
    "Damage",
    "Status",
    "StoreIndex",
    "StoredPart",
    "TrajectoryStore",
    "check_names",
    "export_netcdf",
    "open_store",
    "step_name",
]
