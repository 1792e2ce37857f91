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
import enum
import json
import os
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mechmoe._types import STEP
from mechmoe.core.errors import DamagedFileError, InvalidInputError
from mechmoe.core.provenance import RESERVED, as_attrs, options_json
from mechmoe.core.writer import (
    Output,
    check_manifest,
    checksummed_zarr_encoding,
    file_manifest,
    prepare_output,
    recognize,
    remove_tree,
    zarr_location,
)
from mechmoe.trajectory import root as _root
from mechmoe.trajectory.sources import Checkpoint

if TYPE_CHECKING:
    import xarray as xr

#: The writer's kind for a trajectory store (and its netCDF export).
KIND = "trajectory"
#: Layout version, recorded in ``config.json`` (1: zarr v2 parts without checksums).
FORMAT = 2
CONFIG = "config.json"
MEASURES = "measures"
CHECKPOINTS = "checkpoints"
DUPLICATES = "duplicates"
FAILURES = "failures"
RECORD = "checkpoint.json"
#: Names at the top of a store that no variable of a measure may take (the root shares it).
RESERVED_NAMES = frozenset(
    {CONFIG, MEASURES, CHECKPOINTS, DUPLICATES, FAILURES, _root.STATE, "zarr.json"}
)
#: Test hook: seconds to sleep after a part's data are written, before it is renamed into
#: place (lets a test SIGKILL the writer mid-write).
PAUSE_ENV = "MECHMOE_TEST_PAUSE_IN_WRITE"
#: Benchmark hook: ``1`` writes parts without checksums or manifests and keeps no root, to
#: measure what integrity and the plain-xarray root cost (benchmarks/bench_trajectory.py).
PLAIN_ENV = "MECHMOE_BENCH_PLAIN_STORE"

_STEP_DIR = re.compile(r"^step_(\d{12})$")
_STEP_FILE = re.compile(r"^step_(\d{12})\.json$")
_MEASURE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")

Verify = Literal["full", "quick", "none"]


class Status(enum.StrEnum):
    """What became of a checkpoint in a sweep (and what :meth:`TrajectoryStore.write` returns).

    A :class:`str` enum: ``Status.DONE == "done"`` and it prints as ``done``.
    """

    #: measured (at least one measure stored) in this run
    DONE = "done"
    #: everything asked for was already in the store
    SKIPPED = "skipped"
    #: loading or a measure failed (recorded in ``failures/`` and retried next run)
    FAILED = "failed"
    #: weights identical to an earlier measured checkpoint's (recorded in ``duplicates/``)
    DUPLICATE = "duplicate"


def step_name(step: int) -> str:
    """``step_000000001000``: zero-padded, so names sort like steps."""
    return f"step_{step:012d}"


def _plain() -> bool:
    return os.environ.get(PLAIN_ENV, "") not in ("", "0")


def _json(obj: Any) -> str:
    return json.dumps(json.loads(options_json(obj)), sort_keys=True, indent=1) + "\n"


def _normal(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` as it reads back from JSON (tuples become lists, keys sorted)."""
    return json.loads(options_json(obj))


def _record_checksum(record: Mapping[str, Any]) -> str:
    import google_crc32c

    body = json.dumps({k: v for k, v in record.items() if k != "checksum"}, sort_keys=True)
    return google_crc32c.Checksum(body.encode()).hexdigest().decode()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DamagedFileError(
            f"{path} in the trajectory store cannot be read ({exc}); the store is damaged: "
            "run the same sweep (same --out) again to repair it"
        ) from None


def _try_json(path: Path) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, problem)`` for a missing or unreadable file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    try:
        return json.loads(text), None
    except ValueError:
        return None, "not valid JSON (cut short or overwritten)"


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


# ---- damage ------------------------------------------------------------------------


@dataclass(frozen=True)
class Damage:
    """One damaged file of a store, named as precisely as the layout allows."""

    file: str
    problem: str
    step: int | None = None
    measure: str | None = None
    variable: str | None = None
    what: str = ""

    def __str__(self) -> str:
        where = [f"step {self.step}"] if self.step is not None else []
        if self.measure:
            where.append(f"measure {self.measure!r}")
        if self.variable:
            where.append(f"variable {self.variable!r}")
        head = ", ".join(where)
        detail = self.what or self.file
        return f"{head}: {detail} {self.problem}" if head else f"{detail} {self.problem}"


def _part_damage(step: int, part: Path, rel: str, problem: str) -> Damage:
    first, _, rest = rel.partition("/")
    file = f"{CHECKPOINTS}/{step_name(step)}/{part.name}/{rel}"
    if first.endswith(".zarr"):
        measure = first[: -len(".zarr")]
        variable, what = zarr_location(rest) if rest else (None, first)
        return Damage(file, problem, step, measure, variable, what)
    return Damage(file, problem, step, what=rel)


# ---- the index of what is there ----------------------------------------------------


@dataclass
class StoredPart:
    """One part folder of a checkpoint: its record, what it claims, what of it is damaged.

    ``record`` is ``None`` when ``checkpoint.json`` is missing or unreadable; then
    ``claims`` are the measures its ``NAME.zarr`` folders suggest, none of which count.
    """

    path: Path
    record: dict[str, Any] | None
    claims: set[str]
    damage: dict[str, list[Damage]] = field(default_factory=dict)

    @property
    def good(self) -> set[str]:
        """Measures this part holds intact (or found not to apply)."""
        if self.record is None or "" in self.damage:
            return set()
        return self.claims - set(self.damage)

    @property
    def damages(self) -> list[Damage]:
        return [d for found in self.damage.values() for d in found]


@dataclass
class _StepState:
    parts: list[StoredPart] = field(default_factory=list)

    @property
    def record(self) -> dict[str, Any]:
        """The record of the step (its first part whose record is intact)."""
        for part in self.parts:
            if part.record is not None and "" not in part.damage:
                return part.record
        return {}

    def source(self, measure: str) -> Path | None:
        """The part folder holding ``measure`` intact (the last written wins)."""
        found = [p for p in self.parts if measure in p.good and measure in _measures_of(p)]
        return found[-1].path if found else None


def _measures_of(part: StoredPart) -> list[str]:
    return list((part.record or {}).get("measures", []))


@dataclass
class StoreIndex:
    """What a store holds: parts per step, duplicates, failures, and what is damaged."""

    steps: dict[int, _StepState] = field(default_factory=dict)
    duplicates: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: damaged files outside the parts (config, measure options, duplicate/failure records)
    meta_damage: list[Damage] = field(default_factory=list)
    verified: Verify = "none"

    def done(self, step: int) -> set[str]:
        """Measures completed intact (or not applicable) at ``step``."""
        state = self.steps.get(step)
        return set().union(*(p.good for p in state.parts)) if state else set()

    def measured(self) -> list[int]:
        """Steps with at least one intact measure, duplicates left out, sorted."""
        return sorted(
            s
            for s, st in self.steps.items()
            if s not in self.duplicates and st.record and self.done(s)
        )

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

    def damage(self) -> list[Damage]:
        """Every damaged file found, metadata first, then by step.

        A damaged copy of a measure that an intact part of the same step holds again (a
        repair the writer had not finished tidying) is not counted.
        """
        parts = [d for s in self.damaged_steps() for d in self._live(s)]
        return self.meta_damage + sorted(parts, key=lambda d: (d.step or 0, d.file))

    def _live(self, step: int) -> list[Damage]:
        bad = self.damaged_measures(step)
        state = self.steps[step]
        out = []
        for part in state.parts:
            for key, found in part.damage.items():
                if (
                    (key == "" and part.claims & bad)
                    or key in bad
                    or (key == "" and not part.claims)
                ):
                    out.extend(found)
        return out

    def damaged_steps(self) -> list[int]:
        """Steps holding a damaged part with no intact copy of what it held."""
        return sorted(
            s
            for s, st in self.steps.items()
            if s not in self.duplicates
            and any(
                p.damage
                and (not p.claims or (p.claims if "" in p.damage else set(p.damage)) - self.done(s))
                for p in st.parts
            )
        )

    def damaged_measures(self, step: int) -> set[str]:
        """Measures with a damaged copy at ``step`` and no intact one."""
        state = self.steps.get(step)
        if state is None:
            return set()
        bad: set[str] = set()
        for part in state.parts:
            bad |= part.claims if "" in part.damage else set(part.damage)
        return bad - self.done(step)


def _read_part(step: int, part: Path, verify: Verify) -> StoredPart:
    guessed = {p.name[: -len(".zarr")] for p in part.glob("*.zarr") if not p.name.startswith(".")}
    rec, problem = _try_json(part / RECORD)
    if problem is None and not isinstance(rec, dict):
        problem = "not a checkpoint record"
    if problem is None and "checksum" in rec and rec["checksum"] != _record_checksum(rec):
        problem = "fails its checksum"
    if problem is not None:
        where = f"{CHECKPOINTS}/{step_name(step)}/{part.name}/{RECORD}"
        damage = Damage(
            where, f"{problem}, so the part's results cannot be trusted", step, what=RECORD
        )
        return StoredPart(part, None, guessed, {"": [damage]})
    claims = set(rec.get("measures", [])) | set(rec.get("not_applicable", []))
    out = StoredPart(part, rec, claims)
    files = rec.get("files")
    if verify != "none" and isinstance(files, dict):
        for rel, why in check_manifest(part, files, checksums=verify == "full"):
            d = _part_damage(step, part, rel, why)
            out.damage.setdefault(d.measure or "", []).append(d)
    return out


def _scan(path: Path, verify: Verify = "none") -> StoreIndex:
    index = StoreIndex(verified=verify)
    root = path / CHECKPOINTS
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            m = _STEP_DIR.match(entry.name)
            if m is None or not entry.is_dir():
                continue
            step = int(m.group(1))
            for part in sorted(entry.iterdir()):
                if part.name.startswith(".") or not part.is_dir():
                    continue
                state = index.steps.setdefault(step, _StepState())
                state.parts.append(_read_part(step, part, verify))
    for folder, target in ((DUPLICATES, index.duplicates), (FAILURES, index.failures)):
        d = path / folder
        if d.is_dir():
            for entry in sorted(d.iterdir()):
                m = _STEP_FILE.match(entry.name)
                if m is None:
                    continue
                value, problem = _try_json(entry)
                if problem is None and isinstance(value, dict):
                    target[int(m.group(1))] = value
                elif verify != "none":
                    index.meta_damage.append(
                        Damage(f"{folder}/{entry.name}", problem or "not a record", int(m.group(1)))
                    )
    if verify != "none" and path.is_dir():
        _, problem = _try_json(path / CONFIG)
        if problem is not None:
            index.meta_damage.insert(0, Damage(CONFIG, problem))
        used = {m for st in index.steps.values() for p in st.parts for m in _measures_of(p)}
        for name in sorted(used):
            _, problem = _try_json(path / MEASURES / f"{name}.json")
            if problem is not None:
                index.meta_damage.append(Damage(f"{MEASURES}/{name}.json", problem))
    return index


def _check_store(path: Path) -> None:
    if not path.is_dir():
        raise InvalidInputError(f"no trajectory store at {str(path)!r}")
    found = recognize(path)
    if found != KIND:
        what = f"a mechmoe {found}" if found else "not a mechmoe output"
        raise InvalidInputError(f"{str(path)!r} is {what}, not a trajectory store")


def _damage_error(path: Path, damage: list[Damage], *, skip_hint: bool = True) -> DamagedFileError:
    shown = "; ".join(str(d) for d in damage[:3])
    more = f" (and {len(damage) - 3} more)" if len(damage) > 3 else ""
    hint = ", or open_store(..., damaged='skip') to read the rest" if skip_hint else ""
    return DamagedFileError(
        f"trajectory store {str(path)!r} is damaged: {shown}{more}; nothing was read from "
        "the damaged parts: run the same `mechmoe trajectory` command (or sweep() call, same "
        f"--out) again, which recomputes or restores exactly these{hint}"
    )


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
        self.index = _scan(self.path, verify) if self.path.is_dir() else StoreIndex()

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
            if not _MEASURE_NAME.match(name):
                raise InvalidInputError(
                    f"measure name {name!r} cannot name a store part; use letters, digits, _ or -"
                )
        config = {"format": FORMAT, **_normal(config)}
        mconf = {name: _normal(opts) for name, opts in measures.items()}
        out = prepare_output(path, kind=KIND, overwrite=overwrite, append=True)
        exists = out.path.is_dir() and recognize(out.path) == KIND
        held = contextlib.ExitStack()
        try:
            if lock and exists:
                held.enter_context(out.lock())
            if overwrite or not exists:
                with out.writing() as tmp:
                    (tmp / CONFIG).write_text(_json(config), encoding="utf-8")
                    (tmp / MEASURES).mkdir()
                    for name, opts in mconf.items():
                        (tmp / MEASURES / f"{name}.json").write_text(_json(opts), encoding="utf-8")
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
        stored, problem = _try_json(self.path / CONFIG)
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
                found = _diff(base, other, "")
                if found is not None:
                    raise DamagedFileError(
                        f"{self.path / CONFIG} is lost and the checkpoints' records disagree "
                        f"on {found[0]} ({found[1]!r} and {found[2]!r}); choose another --out"
                    )
            found = _diff(base, config, "")
            if found is not None:
                raise _mismatch(self.path, *found)
            with self._replacing().child(CONFIG) as tmp:
                tmp.write_text(_json(config), encoding="utf-8")
            stored = config
        if stored.get("format") == 1:
            found = _diff({**stored, "format": FORMAT}, config, "")
            if found is not None:
                raise _mismatch(self.path, *found)
            self._upgrade(config)
            stored = config
        found = _diff(stored, config, "")
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
                found = _diff(known, opts, f"measures.{name}")
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
                tmp.write_text(_json(opts), encoding="utf-8")

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
        _check_store(self.path)
        value, problem = _try_json(self.path / CONFIG)
        if problem is not None or not isinstance(value, dict):
            raise _damage_error(
                self.path, [Damage(CONFIG, problem or "not a config")], skip_hint=False
            )
        return value

    def measure_configs(self) -> dict[str, dict[str, Any]]:
        """Options of every measure ever run into this store, by name (readable ones)."""
        folder = self.path / MEASURES
        if not folder.is_dir():
            return {}
        out = {}
        for p in sorted(folder.glob("*.json")):
            value, problem = _try_json(p)
            if problem is None and not p.name.startswith(".") and isinstance(value, dict):
                out[p.stem] = value
        return out

    def refresh(self, verify: Verify | None = None) -> StoreIndex:
        """Scan the store again (``verify``: ``"full"`` reads every checksum)."""
        self.index = _scan(self.path, verify or self.index.verified)
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
        if (
            not refused
            and h
            and index.steps.get(step, _StepState()).record.get("weights_hash") == h
        ):
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
        plain = _plain()
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
                _write_zarr(result.datasets[measure], tmp / f"{measure}.zarr", plain=plain)
            if not plain:
                record["files"] = file_manifest(tmp)
                record["checksum"] = _record_checksum(record)
            (tmp / RECORD).write_text(_json(record), encoding="utf-8")
            pause = float(os.environ.get(PAUSE_ENV) or 0)
            if pause > 0:
                time.sleep(pause)
        state = self.index.steps.setdefault(ckpt.step, _StepState())
        state.parts = [p for p in state.parts if p.path != folder / name]
        state.parts.append(StoredPart(folder / name, json.loads(_json(record)), set(claims)))
        self._supersede(ckpt.step, set(claims), folder / name)

    def _part_name(self, step: int, claims: list[str]) -> tuple[str, bool]:
        """A folder name for a new part, and whether it replaces a folder of that name.

        A folder of the same name is replaced when nothing of it would be lost (it is
        damaged, or everything it holds is in the new part); else a new name is used.
        """
        base = "+".join(claims)
        state = self.index.steps.get(step, _StepState())
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

    def _supersede(self, step: int, claims: set[str], new: Path) -> None:
        """Drop what older parts of ``step`` held of ``claims`` (the new part holds it)."""
        state = self.index.steps[step]
        for part in list(state.parts):
            if part.path == new:
                continue
            if part.record is None or "" in part.damage:
                others = set().union(*(p.good for p in state.parts if p is not part))
                if part.claims <= others:
                    self._remove_part(state, part)
            elif part.claims & claims:
                self._drop_claims(state, part, part.claims & claims)

    def _drop_claims(self, state: _StepState, part: StoredPart, measures: set[str]) -> None:
        """Rewrite ``part``'s record without ``measures`` and remove their data."""
        keep = part.claims - measures
        if not keep:
            self._remove_part(state, part)
            return
        assert part.record is not None
        rec = dict(part.record)
        rec["measures"] = [m for m in rec.get("measures", []) if m in keep]
        rec["not_applicable"] = [m for m in rec.get("not_applicable", []) if m in keep]
        gone = {f"{m}.zarr" for m in measures}
        if isinstance(rec.get("files"), dict):
            rec["files"] = {f: v for f, v in rec["files"].items() if f.split("/", 1)[0] not in gone}
        if isinstance(rec.get("options"), dict):
            rec["options"] = {n: o for n, o in rec["options"].items() if n in keep}
        if "checksum" in rec:
            rec["checksum"] = _record_checksum(rec)
        rel = part.path.relative_to(self.path).as_posix()
        with self._replacing().child(f"{rel}/{RECORD}") as tmp:
            tmp.write_text(_json(rec), encoding="utf-8")
        for name in sorted(gone):
            remove_tree(part.path / name)
        part.record, part.claims = json.loads(_json(rec)), keep
        part.damage = {k: v for k, v in part.damage.items() if k in keep}

    def _remove_part(self, state: _StepState, part: StoredPart) -> None:
        remove_tree(part.path)
        state.parts.remove(part)

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
                tmp.write_text(_json(rec), encoding="utf-8")
        self.index.duplicates[ckpt.step] = rec

    def _discard_parts(self, step: int) -> None:
        """Remove the stored parts of a step found to be a duplicate (its record hides them)."""
        remove_tree(self.path / CHECKPOINTS / step_name(step))
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
        exists = ckpt.step in self.index.failures or os.path.lexists(self.path / rel)
        out = self._replacing() if exists else self._output()
        with out.child(rel) as tmp:
            tmp.write_text(_json(rec), encoding="utf-8")
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
        for step in list(self.index.duplicates):
            if step in self.index.steps:
                self._discard_parts(step)
        for state in self.index.steps.values():
            for part in list(state.parts):
                others = set().union(*(p.good for p in state.parts if p is not part))
                if part.record is None or "" in part.damage:
                    if part.claims <= others:
                        self._remove_part(state, part)
                    continue
                stale = set(part.damage) & others
                if stale:
                    self._drop_claims(state, part, stale)
                    if part not in state.parts:
                        continue
                stray = {
                    p.name[: -len(".zarr")]
                    for p in part.path.glob("*.zarr")
                    if not p.name.startswith(".")
                } - set(part.record.get("measures", []) if part.record else [])
                for m in sorted(stray):
                    remove_tree(part.path / f"{m}.zarr")
        for d in self.index.meta_damage:
            if d.file.startswith((f"{DUPLICATES}/", f"{FAILURES}/")):
                with contextlib.suppress(FileNotFoundError):
                    (self.path / d.file).unlink()
        self.index.meta_damage = [
            d for d in self.index.meta_damage if not d.file.startswith((DUPLICATES, FAILURES))
        ]

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
                        _write_zarr(ds.drop_encoding(), tmp / f"{name}.zarr")
                    new["files"] = file_manifest(tmp)
                    new["checksum"] = _record_checksum(new)
                    (tmp / RECORD).write_text(_json(new), encoding="utf-8")
                part.record = json.loads(_json(new))
        with self._replacing().child(CONFIG) as tmp:
            tmp.write_text(_json(config), encoding="utf-8")

    # -- the root: the whole Dataset for plain xarray --------------------------------
    def sync_root(self, *, verify: bool = False) -> None:
        """Bring the root (``xr.open_zarr(store)``) up to date with the parts.

        With ``verify``, the root's chunks are checked against their CRC-32C first, and a
        damaged root is rewritten from the parts.
        """
        if _plain() or self._out is None:
            return
        steps: list[int] = []
        sources: dict[int, dict[str, Path]] = {}
        tokens: dict[int, dict[str, str]] = {}
        coords: dict[str, list[Any]] = {"tokens": [], "revision": [], "weights_hash": []}
        files: dict[int, dict[str, dict[str, Any]]] = {}
        for step in self.index.measured():
            state = self.index.steps[step]
            found, marks = {}, {}
            for m in sorted(self.index.done(step)):
                src = state.source(m)
                if src is not None:
                    part = next(p for p in state.parts if p.path == src)
                    found[m] = src / f"{m}.zarr"
                    marks[m] = f"{src.name}:{(part.record or {}).get('checksum', '')}"
                    listed = (part.record or {}).get("files") or {}
                    prefix = f"{m}.zarr/"
                    files.setdefault(step, {})[m] = {
                        k[len(prefix) :]: v for k, v in listed.items() if k.startswith(prefix)
                    }
            if not found:
                continue  # only measures that do not apply: no data at this step
            steps.append(step)
            sources[step], tokens[step] = found, marks
            rec = state.record
            coords["tokens"].append(_nan(rec.get("tokens")))
            coords["revision"].append(str(rec.get("revision") or ""))
            coords["weights_hash"].append(str(rec.get("weights_hash") or ""))
        measures = sorted(set().union(*sources.values())) if sources else []
        plan = _root.RootPlan(
            steps=steps,
            sources=sources,
            coords=coords,
            attrs=_store_attrs(self, steps, measures) if steps else {},
            assemble=lambda: _assemble(self.path, self.index, steps),
            tokens=tokens,
            files=files,
        )
        _root.sync(self.path, plan, self._replacing(), RESERVED_NAMES, verify=verify)


def check_names(ds: xr.Dataset) -> None:
    """Refuse a measure's Dataset with a variable named like the store's own files."""
    clash = sorted(str(v) for v in ds.variables if str(v) in RESERVED_NAMES)
    if clash:
        raise InvalidInputError(
            f"a measure's variable is named {clash[0]!r}, a name the trajectory store "
            "keeps for itself; rename the variable"
        )


def _mismatch(path: Path, name: str, old: Any, new: Any) -> InvalidInputError:
    return InvalidInputError(
        f"the trajectory store {str(path)!r} was made with {name}={old!r} but this run has "
        f"{name}={new!r}; rerun with the store's setting, pass --overwrite to start over, "
        "or choose another --out"
    )


def _for_zarr(ds: xr.Dataset) -> xr.Dataset:
    """Object-dtype strings as fixed-width unicode (zarr stores those natively)."""
    ds = ds.copy()
    for name in list(ds.variables):
        var = ds[name]
        if var.dtype == object:
            ds[name] = var.astype(str)
    ds.attrs = as_attrs(ds.attrs)
    return ds


def _write_zarr(ds: xr.Dataset, path: Path, *, plain: bool = False) -> None:
    """One measure's Dataset as zarr v3: one chunk per variable, checksummed, every chunk written."""
    ds = _for_zarr(ds)
    enc = checksummed_zarr_encoding(ds)
    if plain:
        from zarr.codecs import ZstdCodec

        enc = {name: {"compressors": (ZstdCodec(level=0),)} for name in enc}
    for name, var in ds.variables.items():
        enc[str(name)]["chunks"] = tuple(max(1, n) for n in var.shape)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # zarr's note that fixed-width unicode is not in the v3 spec
        ds.to_zarr(
            path,
            mode="w-",
            consolidated=False,
            zarr_format=3,
            encoding=enc,
            write_empty_chunks=True,
        )


# ---- reading -----------------------------------------------------------------------


def _open_part(path: Path) -> xr.Dataset:
    import xarray as xr

    return xr.open_zarr(path, consolidated=False)


def _store_attrs(store: TrajectoryStore, steps: list[int], measures: list[str]) -> dict[str, Any]:
    """The attrs of :func:`open_store`'s Dataset (and of the root)."""
    index = store.index
    config = store._config or store.config()
    options = store._options if store._options is not None else store.measure_configs()
    first = index.steps[steps[0]].record.get("model_attrs", {})
    attrs: dict[str, Any] = dict(first)
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
            "options": json.dumps(options, sort_keys=True),
            "measures": ",".join(measures),
            "duplicate_steps": ",".join(str(s) for s in sorted(index.duplicates)),
            "failed_steps": ",".join(str(s) for s in sorted(index.failures)),
        }
    )
    if "probe_items" in config:
        attrs["probe_items"] = config["probe_items"]
    return as_attrs(attrs)


def _assemble(root: Path, index: StoreIndex, steps: list[int]) -> xr.Dataset:
    """The Dataset of ``steps`` read from their intact parts (lazily, with dask)."""
    import numpy as np
    import xarray as xr

    store = TrajectoryStore(root)
    store.index = index
    per_measure: dict[str, list[xr.Dataset]] = {}
    used: list[int] = []
    for step in steps:
        state = index.steps[step]
        found = False
        for m in sorted(index.done(step)):
            src = state.source(m)
            if src is None:
                continue
            ds = _open_part(src / f"{m}.zarr")
            per_measure.setdefault(m, []).append(ds.expand_dims({STEP: [step]}))
            found = True
        if found:
            used.append(step)
    if not used:
        raise InvalidInputError(
            f"trajectory store {str(root)!r} has no measured checkpoint yet; run the sweep first"
        )
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
    out = out.reindex({STEP: np.asarray(used, dtype=np.int64)})
    recs = [index.steps[s].record for s in used]
    out = out.assign_coords(
        {
            STEP: np.asarray(used, dtype=np.int64),
            "tokens": (STEP, np.array([_nan(r.get("tokens")) for r in recs], dtype=np.float64)),
            "revision": (STEP, np.array([str(r.get("revision") or "") for r in recs], dtype=str)),
            "weights_hash": (
                STEP,
                np.array([str(r.get("weights_hash") or "") for r in recs], dtype=str),
            ),
        }
    )
    out.attrs = _store_attrs(store, used, sorted(per_measure))
    return out


def open_store(
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    damaged: Literal["raise", "skip"] = "raise",
) -> xr.Dataset:
    """Read a trajectory store as one Dataset along ``step`` (sorted ascending).

    Every measure's variables are concatenated along ``step`` and merged; a measure
    added later and not yet run at some steps is NaN there. Coords on ``step``: ``step``,
    ``tokens`` (NaN if unknown), ``revision``, ``weights_hash``. Attrs: the run's config
    and provenance, ``is_moe``, ``top_k``, ``n_experts``, ``measures``, and
    ``duplicate_steps`` / ``failed_steps`` (comma lists). Checkpoints recorded as
    duplicates are left out; the data are read lazily (dask).

    Parameters
    ----------
    verify
        Check every file of the store against the size and CRC-32C its part recorded
        (reads the whole store once) before anything is returned. ``False`` reads without
        that check (zarr still checks each chunk's CRC-32C as it is decoded).
    damaged
        What to do with damage found: ``"raise"`` (the default) raises
        :class:`~mechmoe.core.errors.DamagedFileError` naming each damaged file
        (checkpoint, measure, variable, chunk); ``"skip"`` leaves the steps with damaged
        parts out and lists them in ``attrs["damaged_steps"]``. A damaged part never
        reads as NaN or garbage.
    """
    root = Path(path).expanduser()
    _check_store(root)
    if damaged not in ("raise", "skip"):
        raise InvalidInputError(f"damaged={damaged!r}: use 'raise' or 'skip'")
    index = _scan(root, "full" if verify else "none")
    found = index.damage()
    meta = [d for d in found if d.step is None or d.file.startswith((DUPLICATES, FAILURES))]
    if found and (damaged == "raise" or meta):
        raise _damage_error(root, found, skip_hint=damaged == "raise" and not meta)
    TrajectoryStore(root).config()  # a lost config.json is damage even without verify
    skipped = set(index.damaged_steps())
    steps = [s for s in index.measured() if s not in skipped]
    if not steps:
        if skipped:
            raise _damage_error(root, found, skip_hint=False)
        raise InvalidInputError(
            f"trajectory store {str(root)!r} has no measured checkpoint yet; run the sweep first"
        )
    out = _assemble(root, index, steps)
    if skipped:
        out.attrs["damaged_steps"] = ",".join(str(s) for s in sorted(skipped))
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

    if not isinstance(store, xr.Dataset):
        store_path = Path(store).expanduser()
        if Path(path).expanduser().absolute() == store_path.absolute():
            raise InvalidInputError(
                f"the netCDF export {str(path)!r} is the store itself; name a file "
                "ending in .nc next to it, e.g. --export-nc run.nc"
            )
    if Path(path).suffix.lower() != ".nc":
        raise InvalidInputError(f"netCDF export {str(path)!r} must be a file ending in .nc")
    out = prepare_output(path, kind=KIND, overwrite=overwrite)
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
