"""What the root of a trajectory store holds: its plan, its bookkeeping, its checks.

The store hands :mod:`mechmoe.trajectory.root` a :class:`RootPlan` computed from its parts;
``root.json`` (:data:`STATE`) records what the root holds, so an update compares new parts
with it (:func:`state_from_parts` builds it from every part's metadata). Also here: the
quick and the checksum checks of a root's files and :func:`reset`, which removes the root.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechmoe._types import STEP
from mechmoe.core.writer import Output, remove_tree
from mechmoe.trajectory.zarr_files import (
    chunk_ok,
    describe,
    promotes,
    read_meta,
    write_json,
)

if TYPE_CHECKING:
    import xarray as xr

#: Bookkeeping of the root (what it holds), next to ``config.json``.
STATE = "root.json"
#: Coordinates along ``step`` (rewritten whole at every update: they are small).
STEP_COORDS = (STEP, "tokens", "revision", "weights_hash")
#: Layout version of ``root.json``.
_VERSION = 1


@dataclass
class RootPlan:
    """What the root must hold, as the store computes it from its parts.

    ``sources[step][measure]`` is the ``NAME.zarr`` folder of that measure at that step
    (every listed step has at least one); ``coords`` the values of ``tokens``,
    ``revision`` and ``weights_hash`` per step; ``attrs`` the Dataset's attrs;
    ``assemble`` returns the whole Dataset (lazily, from the parts) for a rewrite.
    """

    steps: list[int]
    sources: dict[int, dict[str, Path]]
    coords: dict[str, list[Any]]
    attrs: dict[str, Any]
    assemble: Callable[[], xr.Dataset]
    tokens: dict[int, dict[str, str]] = field(default_factory=dict)
    #: ``{step: {measure: {path inside NAME.zarr: [size, crc32c]}}}`` from the parts'
    #: records: spares reading coordinate chunks again to compare them
    files: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)


def load_state(path: Path) -> dict[str, Any] | None:
    """What ``root.json`` records; ``None`` if missing, unreadable or of another version."""
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("version") != _VERSION:
        return None
    return state


def save_state(out: Output, state: dict[str, Any]) -> None:
    """Write ``root.json`` (in place: the root is redone from the parts if this is cut short)."""
    write_json(out.path / STATE, {**state, "version": _VERSION}, sort_keys=True)
    out.own(STATE)


def root_names(path: Path, state: Mapping[str, Any] | None, reserved: frozenset[str]) -> set[str]:
    """The root's zarr arrays: those on record and any top-level zarr array found."""
    names = set(state.get("vars", {})) | set(state.get("coords", [])) if state else set()
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if entry.name.startswith(".") or entry.name in reserved or not entry.is_dir():
                continue
            with contextlib.suppress(OSError, ValueError):
                if read_meta(Path(entry.path)).get("node_type") == "array":
                    names.add(entry.name)
    return names - reserved


def reset(path: Path, reserved: frozenset[str]) -> None:
    """Remove the root (its group metadata and arrays); the parts are not touched."""
    for name in root_names(path, load_state(path), reserved):
        remove_tree(path / name)
    with contextlib.suppress(FileNotFoundError):
        (path / "zarr.json").unlink()


def checked(path: Path, state: Mapping[str, Any]) -> bool:
    """Every metadata file of the root parses and every chunk passes its checksum."""
    try:
        json.loads((path / "zarr.json").read_text(encoding="utf-8"))
        for name in [*state.get("vars", {}), *state.get("coords", [])]:
            json.loads((path / name / "zarr.json").read_text(encoding="utf-8"))
            for chunk in (path / name / "c").rglob("*") if (path / name / "c").exists() else ():
                if chunk.is_file() and not chunk_ok(chunk):
                    return False
            if (path / name / "c").is_file() and not chunk_ok(path / name / "c"):
                return False
    except (OSError, ValueError):
        return False
    return True


def intact(path: Path, state: Mapping[str, Any]) -> bool:
    """Every file the root should have is there (a quick check, no data read)."""
    if not (path / "zarr.json").is_file():
        return False
    n = len(state.get("steps", []))
    for name, info in state.get("vars", {}).items():
        if not (path / name / "zarr.json").is_file():
            return False
        measure = info["measure"]
        for i, step in enumerate(state["steps"]):
            if measure in state["sources"].get(str(step), {}) and not os.path.lexists(
                path / name / "c" / str(i)
            ):
                return False
        if n and os.path.lexists(path / name / "c" / str(n)):
            return False
    return all((path / c / "zarr.json").is_file() for c in state.get("coords", []))


def sources_text(plan: RootPlan) -> dict[str, dict[str, str]]:
    """Each (step, measure) source named by its part folder and that part's record checksum."""
    return {
        str(step): {
            m: plan.tokens.get(step, {}).get(m, str(src))
            for m, src in sorted(plan.sources[step].items())
        }
        for step in plan.steps
    }


def combine_attrs(into: dict[str, Any], dropped: list[str], attrs: Mapping[str, Any]) -> None:
    """xarray's ``combine_attrs="drop_conflicts"``, one object at a time."""
    for key, value in attrs.items():
        if key in dropped:
            continue
        if key in into and into[key] != value:
            del into[key]
            dropped.append(key)
            dropped.sort()  # the bookkeeping does not depend on the order parts arrive in
        elif key not in into:
            into[key] = value


def find_holes(plan: RootPlan, variables: Mapping[str, Mapping[str, Any]]) -> dict[str, bool]:
    """Whether each variable misses a step (its measure did not run there)."""
    return {
        name: any(info["measure"] not in plan.sources[s] for s in plan.steps)
        for name, info in variables.items()
    }


CF_KEYS = ("_FillValue", "coordinates", "missing_value", "units", "calendar", "dtype")


def user_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A variable's attrs without the CF encoding keys."""
    return {k: v for k, v in attrs.items() if k not in CF_KEYS}


def var_attrs(measure: Mapping[str, Any], var: Mapping[str, Any]) -> dict[str, Any]:
    """A root variable's attrs: its measure's combined attrs, its own, and ``measure``."""
    from mechmoe.core.provenance import RESERVED

    kept = {k: v for k, v in measure["attrs"].items() if k not in RESERVED}
    return {**kept, **var["attrs"], "measure": var["measure"]}


def state_from_parts(
    plan: RootPlan,
) -> tuple[dict[str, Any], dict[tuple[int, str], dict[str, Any]]]:
    """What an incremental update compares new parts with, from every part's metadata."""
    measures: dict[str, dict[str, Any]] = {}
    variables: dict[str, dict[str, Any]] = {}
    coord_sig: dict[str, str] = {}
    descs = {}
    for s in plan.steps:
        for m, src in sorted(plan.sources[s].items()):
            desc = descs[(s, m)] = describe(src, plan.files.get(s, {}).get(m))
            entry = measures.setdefault(m, {"attrs": {}, "dropped": []})
            combine_attrs(entry["attrs"], entry["dropped"], desc["attrs"])
            for name, info in desc["arrays"].items():
                if not info["data"]:
                    coord_sig.setdefault(name, info["sig"])
                    continue
                var = variables.setdefault(
                    name,
                    {
                        "measure": m,
                        "dims": [STEP, *info["dims"]],
                        "shape": info["shape"],
                        "part_dtype": info["dtype"],
                        "attrs": {},
                        "dropped": [],
                    },
                )
                combine_attrs(var["attrs"], var["dropped"], user_attrs(info["attrs"]))
    holes = find_holes(plan, variables)
    for name, var in variables.items():
        var["holes"] = holes[name]
        var["promotes"] = promotes(var["part_dtype"])
    state = {
        "steps": list(plan.steps),
        "sources": sources_text(plan),
        "measures": measures,
        "vars": variables,
        "coord_sig": coord_sig,
    }
    return state, descs


__all__ = [
    "CF_KEYS",
    "STATE",
    "STEP_COORDS",
    "RootPlan",
    "checked",
    "combine_attrs",
    "find_holes",
    "intact",
    "load_state",
    "reset",
    "root_names",
    "save_state",
    "sources_text",
    "state_from_parts",
    "user_attrs",
    "var_attrs",
]
