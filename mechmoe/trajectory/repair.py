"""Keeping a trajectory store's parts in order: superseded, duplicate and damaged parts.

When a new part holds measures an older part of the same step held, the older copies go
(:func:`supersede`); the parts of a step found to duplicate an earlier one go
(:func:`discard_parts`); and :func:`tidy_store` finishes what a writer cut short left behind.
Every change goes through the writer's replacing :class:`~mechmoe.core.writer.Output`,
made when first needed (``replacing``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from mechmoe.core.writer import Output, remove_tree
from mechmoe.trajectory.layout import (
    CHECKPOINTS,
    DUPLICATES,
    FAILURES,
    RECORD,
    record_checksum,
    step_name,
    to_json,
)
from mechmoe.trajectory.store_index import StepState, StoredPart, StoreIndex

#: The store's writer allowed to replace what is there (made when first called).
Replacing = Callable[[], Output]


def supersede(
    root: Path, replacing: Replacing, index: StoreIndex, step: int, claims: set[str], new: Path
) -> None:
    """Drop what older parts of ``step`` held of ``claims`` (the new part holds it)."""
    state = index.steps[step]
    for part in list(state.parts):
        if part.path == new:
            continue
        if part.record is None or "" in part.damage:
            others = set().union(*(p.good for p in state.parts if p is not part))
            if part.claims <= others:
                remove_part(state, part)
        elif part.claims & claims:
            drop_claims(root, replacing, state, part, part.claims & claims)


def drop_claims(
    root: Path, replacing: Replacing, state: StepState, part: StoredPart, measures: set[str]
) -> None:
    """Rewrite ``part``'s record without ``measures`` and remove their data."""
    keep = part.claims - measures
    if not keep:
        remove_part(state, part)
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
        rec["checksum"] = record_checksum(rec)
    rel = part.path.relative_to(root).as_posix()
    with replacing().child(f"{rel}/{RECORD}") as tmp:
        tmp.write_text(to_json(rec), encoding="utf-8")
    for name in sorted(gone):
        remove_tree(part.path / name)
    part.record, part.claims = json.loads(to_json(rec)), keep
    part.damage = {k: v for k, v in part.damage.items() if k in keep}


def remove_part(state: StepState, part: StoredPart) -> None:
    """Remove ``part`` from the store and from ``state``."""
    remove_tree(part.path)
    state.parts.remove(part)


def discard_parts(root: Path, index: StoreIndex, step: int) -> None:
    """Remove the stored parts of a step found to be a duplicate (its record hides them)."""
    remove_tree(root / CHECKPOINTS / step_name(step))
    index.steps.pop(step, None)


def tidy_store(root: Path, index: StoreIndex, replacing: Replacing) -> None:
    """Put the store in order after a writer was cut short or files were damaged.

    Removes parts left under steps recorded as duplicates (a writer killed mid-swap),
    removes copies of measures that an intact later part holds again (a writer killed
    while replacing a damaged part), and replaces unreadable duplicate and failure
    records (they are redone by the sweep).
    """
    for step in list(index.duplicates):
        if step in index.steps:
            discard_parts(root, index, step)
    for state in index.steps.values():
        for part in list(state.parts):
            others = set().union(*(p.good for p in state.parts if p is not part))
            if part.record is None or "" in part.damage:
                if part.claims <= others:
                    remove_part(state, part)
                continue
            stale = set(part.damage) & others
            if stale:
                drop_claims(root, replacing, state, part, stale)
                if part not in state.parts:
                    continue
            stray = {
                p.name[: -len(".zarr")]
                for p in part.path.glob("*.zarr")
                if not p.name.startswith(".")
            } - set(part.record.get("measures", []) if part.record else [])
            for m in sorted(stray):
                remove_tree(part.path / f"{m}.zarr")
    for d in index.meta_damage:
        if d.file.startswith((f"{DUPLICATES}/", f"{FAILURES}/")):
            with contextlib.suppress(FileNotFoundError):
                (root / d.file).unlink()
    index.meta_damage = [
        d for d in index.meta_damage if not d.file.startswith((DUPLICATES, FAILURES))
    ]


__all__ = ["Replacing", "discard_parts", "drop_claims", "remove_part", "supersede", "tidy_store"]
