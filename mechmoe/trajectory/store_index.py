"""What a trajectory store holds, read from its files, and what of it is damaged.

:func:`scan` lists every part of every checkpoint with its record (and, when asked,
compares every file with the size and CRC-32C the record lists), the duplicate and
failure records, and the metadata files: a :class:`StoreIndex`. Damage is named as
precisely as the layout allows (:class:`Damage`: checkpoint, measure, variable, chunk).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechmoe.core.errors import DamagedFileError, InvalidInputError
from mechmoe.core.writer import check_manifest, recognize, zarr_location
from mechmoe.trajectory.layout import (
    CHECKPOINTS,
    CONFIG,
    DUPLICATES,
    FAILURES,
    KIND,
    MEASURES,
    RECORD,
    STEP_DIR,
    STEP_FILE,
    Verify,
    record_checksum,
    step_name,
    try_json,
)


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


def part_damage(step: int, part: Path, rel: str, problem: str) -> Damage:
    """The :class:`Damage` of file ``rel`` of a part, named by measure and variable."""
    first, _, rest = rel.partition("/")
    file = f"{CHECKPOINTS}/{step_name(step)}/{part.name}/{rel}"
    if first.endswith(".zarr"):
        measure = first[: -len(".zarr")]
        variable, what = zarr_location(rest) if rest else (None, first)
        return Damage(file, problem, step, measure, variable, what)
    return Damage(file, problem, step, what=rel)


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
class StepState:
    """The parts stored under one checkpoint."""

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
        found = [p for p in self.parts if measure in p.good and measure in measures_of(p)]
        return found[-1].path if found else None


def measures_of(part: StoredPart) -> list[str]:
    """The measures a part's record says it holds."""
    return list((part.record or {}).get("measures", []))


@dataclass
class StoreIndex:
    """What a store holds: parts per step, duplicates, failures, and what is damaged."""

    steps: dict[int, StepState] = field(default_factory=dict)
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


def read_part(step: int, part: Path, verify: Verify) -> StoredPart:
    """One part folder: its record, checked, and (with ``verify``) its files' damage."""
    guessed = {p.name[: -len(".zarr")] for p in part.glob("*.zarr") if not p.name.startswith(".")}
    rec, problem = try_json(part / RECORD)
    if problem is None and not isinstance(rec, dict):
        problem = "not a checkpoint record"
    if problem is None and "checksum" in rec and rec["checksum"] != record_checksum(rec):
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
            d = part_damage(step, part, rel, why)
            out.damage.setdefault(d.measure or "", []).append(d)
    return out


def scan(path: Path, verify: Verify = "none") -> StoreIndex:
    """What the store at ``path`` holds; ``verify`` also compares its files with the records."""
    index = StoreIndex(verified=verify)
    root = path / CHECKPOINTS
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            m = STEP_DIR.match(entry.name)
            if m is None or not entry.is_dir():
                continue
            step = int(m.group(1))
            for part in sorted(entry.iterdir()):
                if part.name.startswith(".") or not part.is_dir():
                    continue
                state = index.steps.setdefault(step, StepState())
                state.parts.append(read_part(step, part, verify))
    for folder, target in ((DUPLICATES, index.duplicates), (FAILURES, index.failures)):
        d = path / folder
        if d.is_dir():
            for entry in sorted(d.iterdir()):
                m = STEP_FILE.match(entry.name)
                if m is None:
                    continue
                value, problem = try_json(entry)
                if problem is None and isinstance(value, dict):
                    target[int(m.group(1))] = value
                elif verify != "none":
                    index.meta_damage.append(
                        Damage(f"{folder}/{entry.name}", problem or "not a record", int(m.group(1)))
                    )
    if verify != "none" and path.is_dir():
        _, problem = try_json(path / CONFIG)
        if problem is not None:
            index.meta_damage.insert(0, Damage(CONFIG, problem))
        used = {m for st in index.steps.values() for p in st.parts for m in measures_of(p)}
        for name in sorted(used):
            _, problem = try_json(path / MEASURES / f"{name}.json")
            if problem is not None:
                index.meta_damage.append(Damage(f"{MEASURES}/{name}.json", problem))
    return index


def check_store(path: Path) -> None:
    """Refuse a path that is not a trajectory store."""
    if not path.is_dir():
        raise InvalidInputError(f"no trajectory store at {str(path)!r}")
    found = recognize(path)
    if found != KIND:
        what = f"a mechmoe {found}" if found else "not a mechmoe output"
        raise InvalidInputError(f"{str(path)!r} is {what}, not a trajectory store")


def damage_error(path: Path, damage: list[Damage], *, skip_hint: bool = True) -> DamagedFileError:
    """The one error naming a store's damage and how to repair it."""
    shown = "; ".join(str(d) for d in damage[:3])
    more = f" (and {len(damage) - 3} more)" if len(damage) > 3 else ""
    hint = ", or open_store(..., damaged='skip') to read the rest" if skip_hint else ""
    return DamagedFileError(
        f"trajectory store {str(path)!r} is damaged: {shown}{more}; nothing was read from "
        "the damaged parts: run the same `mechmoe trajectory` command (or sweep() call, same "
        f"--out) again, which recomputes or restores exactly these{hint}"
    )


__all__ = [
    "Damage",
    "StepState",
    "StoreIndex",
    "StoredPart",
    "check_store",
    "damage_error",
    "measures_of",
    "part_damage",
    "read_part",
    "scan",
]
