"""The trajectory store: one model's measures over its checkpoints, in one resumable folder.

A store is a folder (``run.zarr``) written only through :mod:`mechmoe.core.writer`::

    run.zarr/
      .mechmoe.json                     marker: a mechmoe "trajectory"
      config.json                       the run's config (model, source, probe, dtype, device)
      measures/NAME.json                each measure's options, written when first run
      checkpoints/step_000000001000/    one folder per checkpoint, holding one part per run:
        hit+neuron_lpi/                   the measures that run computed, renamed into place
          checkpoint.json                 step, tokens, revision, weights hash, model attrs
          hit.zarr  neuron_lpi.zarr       each measure's Dataset (no step dim), zarr v2
      duplicates/step_000000001200.json a checkpoint whose weights equal an earlier one's
      failures/step_000000001100.json   a checkpoint (or measure) that failed: error, traceback

Every part is written to a hidden temporary and renamed into place, so a reader sees a
checkpoint's results of a run completely or not at all, whatever happens to the writer
(``SIGKILL`` included); readers skip dot-names. Completion is tracked per (checkpoint,
measure), so adding a measure or checkpoints later computes only what is missing.

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
...     store.write(res)
'done'
'done'
>>> run = open_store(path)
>>> run["score"].dims, run["step"].values.tolist(), run["tokens"].values.tolist()
(('step', 'layer'), [10, 20], [10000000.0, 20000000.0])
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechmoe._types import STEP
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.provenance import RESERVED, as_attrs, options_json
from mechmoe.core.writer import Output, prepare_output, recognize
from mechmoe.trajectory.sources import Checkpoint

if TYPE_CHECKING:
    import xarray as xr

#: The writer's kind for a trajectory store (and its netCDF export).
KIND = "trajectory"
#: Layout version, recorded in ``config.json``.
FORMAT = 1
CONFIG = "config.json"
MEASURES = "measures"
CHECKPOINTS = "checkpoints"
DUPLICATES = "duplicates"
FAILURES = "failures"
RECORD = "checkpoint.json"
#: Test hook: seconds to sleep after a part's data are written, before it is renamed into
#: place (lets a test SIGKILL the writer mid-write).
PAUSE_ENV = "MECHMOE_TEST_PAUSE_IN_WRITE"

_STEP_DIR = re.compile(r"^step_(\d{12})$")
_STEP_FILE = re.compile(r"^step_(\d{12})\.json$")
_MEASURE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


def step_name(step: int) -> str:
    """``step_000000001000``: zero-padded, so names sort like steps."""
    return f"step_{step:012d}"


def _json(obj: Any) -> str:
    return json.dumps(json.loads(options_json(obj)), sort_keys=True, indent=1) + "\n"


def _normal(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` as it reads back from JSON (tuples become lists, keys sorted)."""
    return json.loads(options_json(obj))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"{path} in the trajectory store cannot be read ({exc}); the store is damaged"
        ) from None


def _diff(old: Any, new: Any, where: str) -> tuple[str, Any, Any] | None:
    """The first field (dotted path) where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _diff(old.get(key), new.get(key), f"{where}.{key}" if where else key)
            if found is not None:
                return found
        return None
    return None if old == new else (where, old, new)


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


# ---- the index of what is there ----------------------------------------------------


@dataclass
class _StepState:
    record: dict[str, Any]
    done: set[str] = field(default_factory=set)
    parts: list[Path] = field(default_factory=list)


@dataclass
class StoreIndex:
    """What a store holds: completed parts per step, duplicates and failures."""

    steps: dict[int, _StepState] = field(default_factory=dict)
    duplicates: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: dict[int, dict[str, Any]] = field(default_factory=dict)

    def done(self, step: int) -> set[str]:
        """Measures completed (or not applicable) at ``step``."""
        state = self.steps.get(step)
        return set() if state is None else set(state.done)

    def hashes(self) -> dict[int, str]:
        """Weights hash of every measured (non-duplicate) step."""
        return {
            s: st.record["weights_hash"]
            for s, st in self.steps.items()
            if s not in self.duplicates and st.record.get("weights_hash")
        }

    def original_of(self, step: int) -> int | None:
        """The earliest measured step with the same weights as duplicate ``step``."""
        h = self.duplicates.get(step, {}).get("weights_hash")
        same = [s for s, hh in self.hashes().items() if hh == h]
        return min(same) if same else None


def _scan(path: Path) -> StoreIndex:
    index = StoreIndex()
    root = path / CHECKPOINTS
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            m = _STEP_DIR.match(entry.name)
            if m is None or not entry.is_dir():
                continue
            step = int(m.group(1))
            for part in sorted(entry.iterdir()):
                if part.name.startswith(".") or not (part / RECORD).is_file():
                    continue
                rec = _read_json(part / RECORD)
                state = index.steps.setdefault(step, _StepState(record=rec))
                state.done |= set(rec.get("measures", [])) | set(rec.get("not_applicable", []))
                state.parts.append(part)
    for folder, target in ((DUPLICATES, index.duplicates), (FAILURES, index.failures)):
        d = path / folder
        if d.is_dir():
            for entry in sorted(d.iterdir()):
                m = _STEP_FILE.match(entry.name)
                if m is not None:
                    target[int(m.group(1))] = _read_json(entry)
    return index


def _check_store(path: Path) -> None:
    if not path.is_dir():
        raise InvalidInputError(f"no trajectory store at {str(path)!r}")
    found = recognize(path)
    if found != KIND:
        what = f"a mechmoe {found}" if found else "not a mechmoe output"
        raise InvalidInputError(f"{str(path)!r} is {what}, not a trajectory store")
    if not (path / CONFIG).is_file():
        raise InvalidInputError(f"trajectory store {str(path)!r} has no {CONFIG}; it is damaged")


# ---- the writer --------------------------------------------------------------------


class TrajectoryStore:
    """Reader and (single) writer of a trajectory store.

    Build a writer with :meth:`create_or_open`; a reader needs only the path
    (:func:`open_store` is the usual way to read).
    """

    def __init__(self, path: str | os.PathLike[str], *, _output: Output | None = None) -> None:
        self.path = Path(path).expanduser()
        self._out = _output
        self._replace: Output | None = None
        self.index = _scan(self.path) if self.path.is_dir() else StoreIndex()

    # -- opening -------------------------------------------------------------------
    @classmethod
    def create_or_open(
        cls,
        path: str | os.PathLike[str],
        config: Mapping[str, Any],
        measures: Mapping[str, Mapping[str, Any]],
        *,
        overwrite: bool = False,
    ) -> TrajectoryStore:
        """Open ``path`` to add results, creating it (or, with ``overwrite``, replacing it).

        ``config`` is the run's config (everything that changes results except the
        measures); ``measures`` maps each measure of this run to its options. An existing
        store must have the same config and the same options for the measures both have;
        otherwise this raises naming the first field that differs. New measures are added.
        Nothing is written unless the checks pass.
        """
        for name in measures:
            if not _MEASURE_NAME.match(name):
                raise InvalidInputError(
                    f"measure name {name!r} cannot name a store part; use letters, digits, _ or -"
                )
        config = {"format": FORMAT, **_normal(config)}
        mconf = {name: _normal(opts) for name, opts in measures.items()}
        out = prepare_output(path, kind=KIND, overwrite=overwrite, append=True)
        exists = out.path.is_dir() and recognize(out.path) == KIND
        if overwrite or not exists:
            with out.writing() as tmp:
                (tmp / CONFIG).write_text(_json(config), encoding="utf-8")
                (tmp / MEASURES).mkdir()
                for name, opts in mconf.items():
                    (tmp / MEASURES / f"{name}.json").write_text(_json(opts), encoding="utf-8")
            out = prepare_output(path, kind=KIND, append=True)
            return cls(out.path, _output=out)
        _check_store(out.path)
        stored = _read_json(out.path / CONFIG)
        found = _diff(stored, config, "")
        if found is not None:
            raise _mismatch(out.path, *found)
        store = cls(out.path, _output=out)
        old = store.measure_configs()
        for name, opts in mconf.items():
            if name in old:
                found = _diff(old[name], opts, f"measures.{name}")
                if found is not None:
                    raise _mismatch(out.path, *found)
        for name, opts in mconf.items():
            if name not in old:
                with out.child(f"{MEASURES}/{name}.json") as tmp:
                    tmp.write_text(_json(opts), encoding="utf-8")
        return store

    # -- reading -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The run config recorded when the store was created."""
        _check_store(self.path)
        return _read_json(self.path / CONFIG)

    def measure_configs(self) -> dict[str, dict[str, Any]]:
        """Options of every measure ever run into this store, by name."""
        folder = self.path / MEASURES
        if not folder.is_dir():
            return {}
        return {
            p.stem: _read_json(p)
            for p in sorted(folder.glob("*.json"))
            if not p.name.startswith(".")
        }

    def refresh(self) -> StoreIndex:
        self.index = _scan(self.path)
        return self.index

    # -- writing -------------------------------------------------------------------
    def _output(self) -> Output:
        if self._out is None:
            raise RuntimeError("this TrajectoryStore was opened for reading only")
        return self._out

    def _replacing(self) -> Output:
        if self._replace is None:
            self._replace = prepare_output(self.path, kind=KIND, overwrite=True, append=True)
        return self._replace

    def write(self, result: CheckpointResult) -> str:
        """Add one checkpoint's results; returns ``"done"``, ``"duplicate"`` or ``"failed"``.

        Results of a checkpoint whose weights equal those of an earlier measured step are
        not stored: the checkpoint is recorded as a duplicate. If a later step with the
        same weights was stored first (workers finish in any order), that one becomes the
        duplicate, so the final store does not depend on the order results arrive in.
        """
        ckpt, step = result.checkpoint, result.checkpoint.step
        index = self.index
        status = "failed" if result.error else "done"
        h = result.weights_hash
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
                status = "failed"
        same = sorted(s for s, hh in index.hashes().items() if h and hh == h and s != step)
        if not result.error and (result.duplicate or (same and same[0] < step)):
            self._write_duplicate(ckpt, h)
            self._clear_failure(step)
            return "duplicate"
        if result.datasets or result.not_applicable:
            self._write_part(result)
        if result.error:
            self._write_failure(result)
        else:
            self._clear_failure(step)
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
            self._discard_parts(later)
        return status

    def _write_part(self, result: CheckpointResult) -> None:
        ckpt = result.checkpoint
        names = sorted(result.datasets)
        part = "+".join(sorted({*names, *result.not_applicable}))
        record = {
            "step": ckpt.step,
            "tokens": ckpt.tokens,
            "revision": ckpt.revision or ckpt.label,
            "label": ckpt.label,
            "weights_hash": result.weights_hash,
            "measures": names,
            "not_applicable": sorted(result.not_applicable),
            "model_attrs": dict(sorted(as_attrs(result.model_attrs).items())),
        }
        rel = f"{CHECKPOINTS}/{step_name(ckpt.step)}/{part}"
        with self._output().child(rel, folder=True) as tmp:
            for name in names:
                _for_zarr(result.datasets[name]).to_zarr(
                    tmp / f"{name}.zarr", mode="w-", consolidated=False, zarr_format=2
                )
            (tmp / RECORD).write_text(_json(record), encoding="utf-8")
            pause = float(os.environ.get(PAUSE_ENV) or 0)
            if pause > 0:
                time.sleep(pause)
        state = self.index.steps.setdefault(ckpt.step, _StepState(record=record))
        state.done |= set(names) | set(result.not_applicable)
        state.parts.append(self.path / rel)

    def _write_duplicate(self, ckpt: Checkpoint, weights_hash: str | None) -> None:
        rec = {
            "step": ckpt.step,
            "tokens": ckpt.tokens,
            "revision": ckpt.revision or ckpt.label,
            "label": ckpt.label,
            "weights_hash": weights_hash,
        }
        if ckpt.step not in self.index.duplicates:
            with self._output().child(f"{DUPLICATES}/{step_name(ckpt.step)}.json") as tmp:
                tmp.write_text(_json(rec), encoding="utf-8")
        self.index.duplicates[ckpt.step] = rec

    def _discard_parts(self, step: int) -> None:
        """Remove the stored parts of a step found to be a duplicate (its record hides them)."""
        folder = self.path / CHECKPOINTS / step_name(step)
        if folder.exists():
            # rename to a writer-style temporary first: atomic, and skipped by readers
            away = folder.with_name(f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            os.rename(folder, away)
            shutil.rmtree(away, ignore_errors=True)
        self.index.steps.pop(step, None)

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
        out = self._replacing() if ckpt.step in self.index.failures else self._output()
        with out.child(rel) as tmp:
            tmp.write_text(_json(rec), encoding="utf-8")
        self.index.failures[ckpt.step] = rec

    def _clear_failure(self, step: int) -> None:
        if step in self.index.failures:
            with contextlib.suppress(FileNotFoundError):
                (self.path / FAILURES / f"{step_name(step)}.json").unlink()
            del self.index.failures[step]

    def tidy(self) -> None:
        """Remove parts left under steps recorded as duplicates (a writer killed mid-swap)."""
        for step in list(self.index.duplicates):
            if step in self.index.steps:
                self._discard_parts(step)


def _mismatch(path: Path, name: str, old: Any, new: Any) -> InvalidInputError:
    return InvalidInputError(
        f"the trajectory store {str(path)!r} was made with {name}={old!r} but this run has "
        f"{name}={new!r}; rerun with the store's setting, pass --overwrite to start over, "
        "or choose another --out"
    )


def _for_zarr(ds: xr.Dataset) -> xr.Dataset:
    """Object-dtype strings as fixed-width unicode (zarr v2 stores those natively)."""
    ds = ds.copy()
    for name in list(ds.variables):
        var = ds[name]
        if var.dtype == object:
            ds[name] = var.astype(str)
    ds.attrs = as_attrs(ds.attrs)
    return ds


# ---- reading -----------------------------------------------------------------------


def _open_part(path: Path) -> xr.Dataset:
    import xarray as xr

    return xr.open_zarr(path, consolidated=False, zarr_format=2)


def open_store(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a trajectory store as one Dataset along ``step`` (sorted ascending).

    Every measure's variables are concatenated along ``step`` and merged; a measure
    added later and not yet run at some steps is NaN there. Coords on ``step``: ``step``,
    ``tokens`` (NaN if unknown), ``revision``, ``weights_hash``. Attrs: the run's config
    and provenance, ``is_moe``, ``top_k``, ``n_experts``, ``measures``, and
    ``duplicate_steps`` / ``failed_steps`` (comma lists). Checkpoints recorded as
    duplicates are left out; the data are read lazily (dask).
    """
    import numpy as np
    import xarray as xr

    root = Path(path).expanduser()
    _check_store(root)
    store = TrajectoryStore(root)
    config = store.config()
    index = store.index
    steps = sorted(s for s in index.steps if s not in index.duplicates)
    if not steps:
        raise InvalidInputError(
            f"trajectory store {str(root)!r} has no measured checkpoint yet; run the sweep first"
        )
    per_measure: dict[str, list[xr.Dataset]] = {}
    for step in steps:
        for part in index.steps[step].parts:
            rec = _read_json(part / RECORD)
            for name in rec.get("measures", []):
                ds = _open_part(part / f"{name}.zarr")
                per_measure.setdefault(name, []).append(ds.expand_dims({STEP: [step]}))
    merged = []
    for name in sorted(per_measure):
        parts = sorted(per_measure[name], key=lambda d: int(d[STEP].values[0]))
        ds = xr.concat(
            parts,
            dim=STEP,
            data_vars="all",
            coords="minimal",
            compat="equals",
            join="exact",
            combine_attrs="drop_conflicts",
        )
        kept = {k: v for k, v in ds.attrs.items() if k not in RESERVED}
        for var in ds.data_vars:
            ds.variables[var].attrs = {**kept, **ds.variables[var].attrs, "measure": name}
        ds.attrs = {}
        merged.append(ds)
    out = xr.merge(merged, join="outer", compat="no_conflicts", combine_attrs="override")
    out = out.reindex({STEP: np.asarray(steps, dtype=np.int64)})
    recs = [index.steps[s].record for s in steps]
    out = out.assign_coords(
        {
            STEP: np.asarray(steps, dtype=np.int64),
            "tokens": (STEP, np.array([_nan(r.get("tokens")) for r in recs], dtype=np.float64)),
            "revision": (STEP, np.array([str(r.get("revision") or "") for r in recs], dtype=str)),
            "weights_hash": (
                STEP,
                np.array([str(r.get("weights_hash") or "") for r in recs], dtype=str),
            ),
        }
    )
    first = recs[0].get("model_attrs", {})
    attrs: dict[str, Any] = {k: v for k, v in first.items()}
    attrs.setdefault("is_moe", 0)
    attrs.setdefault("top_k", 1)
    attrs.setdefault("n_experts", 1)
    attrs.update(
        {
            "model": config.get("model", ""),
            "source": json.dumps(config.get("source", {}), sort_keys=True),
            "probe": config.get("probe", ""),
            "probe_hash": config.get("probe_hash", ""),
            "dtype": config.get("dtype", ""),
            "device": config.get("device", ""),
            "config": json.dumps(config, sort_keys=True),
            "options": json.dumps(store.measure_configs(), sort_keys=True),
            "measures": ",".join(sorted(per_measure)),
            "duplicate_steps": ",".join(str(s) for s in sorted(index.duplicates)),
            "failed_steps": ",".join(str(s) for s in sorted(index.failures)),
        }
    )
    if "probe_items" in config:
        attrs["probe_items"] = config["probe_items"]
    out.attrs = as_attrs(attrs)
    return out


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def export_netcdf(
    store: str | os.PathLike[str] | xr.Dataset,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a store (or its :func:`open_store` Dataset) to one netCDF file, safely.

    The file is marked as a mechmoe ``trajectory``, so ``overwrite=True`` may replace an
    earlier export but never a file mechmoe did not write.
    """
    import dask
    import xarray as xr

    from mechmoe.core.writer import marker

    out = prepare_output(path, kind=KIND, overwrite=overwrite)
    if out.folder:
        raise InvalidInputError(f"netCDF export {str(path)!r} must be a file ending in .nc")
    ds = store if isinstance(store, xr.Dataset) else open_store(store)
    with dask.config.set(scheduler="synchronous"):
        ds = ds.load()
    ds = _for_zarr(ds)
    ds.attrs = {**ds.attrs, **marker(KIND)}
    with out.writing() as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    return out.path


__all__ = [
    "KIND",
    "CheckpointResult",
    "StoreIndex",
    "TrajectoryStore",
    "export_netcdf",
    "open_store",
    "step_name",
]
