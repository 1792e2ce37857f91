"""The root of a trajectory store: one zarr v3 group that plain xarray opens.

A store's source of truth is its per-checkpoint parts (:mod:`mechmoe.trajectory.store`),
each renamed into place whole. After every part lands, the store brings its *root* up to
date: the folder ``run.zarr`` itself is a zarr v3 group holding the Dataset
:func:`~mechmoe.trajectory.store.open_store` returns (every variable along ``step``, one
chunk per step, zstd and CRC-32C like the parts; the ``step`` coords; the store's attrs;
consolidated metadata), so ``xarray.open_zarr("run.zarr")`` and any zarr reader see the
same data. The parts' folders (``checkpoints/`` and the rest) are not zarr nodes and are
ignored by such readers.

Updating is incremental: a checkpoint that lands after the last one is written in place;
one that lands between earlier ones shifts the later steps' chunk files (renames, no data
rewritten); a measure's data at a step is written at its position. Anything that changes
the layout (a variable appears, an integer variable gains or loses a missing step and so
its NaN-able dtype, a coordinate changes, a step is removed) rewrites the root from the
parts. ``root.json`` records what the root holds; it says ``"updating"`` while the root is
changed, so an update cut short (a crash, ``SIGKILL``) is redone from the parts by the
next writer. A reader that opens the root while a sweep updates it may see it mid-change;
:func:`~mechmoe.trajectory.store.open_store` reads the parts and never does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechmoe._types import STEP
from mechmoe.core.writer import Output, checksummed_zarr_encoding, remove_tree

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


class _Rewrite(Exception):
    """The layout changes: rewrite the root from the parts."""


# ---- reading zarr v3 metadata straight from the files --------------------------------
def _meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "zarr.json").read_text(encoding="utf-8"))


def _dtype_text(meta: Mapping[str, Any]) -> str:
    return json.dumps(meta.get("data_type"), sort_keys=True)


def _describe(source: Path, files: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A measure's part: its attrs; every array's dims, shape, dtype, attrs and role.

    Coordinates also get a signature of their values (sizes and checksums of their chunk
    files, from ``files`` when the part's record lists them), so a part whose
    coordinates differ from the root's is noticed.
    """
    from mechmoe.core.writer import file_checksum

    def checksum(rel: str, p: Path) -> tuple[int, str]:
        entry = (files or {}).get(rel)
        if entry is not None:
            return int(entry[0]), str(entry[1])
        return p.stat().st_size, file_checksum(p)

    group = _meta(source)
    arrays: dict[str, dict[str, Any]] = {}
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        meta = _meta(Path(entry.path))
        arrays[entry.name] = {
            "dims": list(meta.get("dimension_names") or []),
            "shape": list(meta["shape"]),
            "dtype": _dtype_text(meta),
            "attrs": dict(meta.get("attributes") or {}),
        }
    listed: set[str] = set()
    for info in arrays.values():
        listed |= set(str(info["attrs"].get("coordinates", "")).split())
    for name, info in arrays.items():
        info["data"] = name not in listed and info["dims"] != [name]
        if not info["data"]:
            folder = source / name
            info["sig"] = json.dumps(
                [
                    info["dims"],
                    info["shape"],
                    info["dtype"],
                    sorted(
                        (
                            p.relative_to(folder).as_posix(),
                            *checksum(p.relative_to(source).as_posix(), p),
                        )
                        for p in folder.rglob("*")
                        if p.is_file() and p.name != "zarr.json"
                    ),
                ]
            )
    return {"attrs": dict(group.get("attributes") or {}), "arrays": arrays}


def _promotes(dtype_text: str) -> bool:
    """Whether a variable of this (part) dtype changes dtype when a step lacks it (int → float)."""
    import numpy as np

    value = json.loads(dtype_text)
    if not isinstance(value, str):
        return True  # strings and other structured types: NaN makes them objects
    try:
        return np.dtype(value).kind not in "fc"
    except TypeError:
        return True


# ---- the update ----------------------------------------------------------------------
def _load_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("version") != _VERSION:
        return None
    return state


def _save_state(out: Output, state: dict[str, Any]) -> None:
    _write_json(out.path / STATE, {**state, "version": _VERSION}, sort_keys=True)
    out.own(STATE)


def _root_names(path: Path, state: Mapping[str, Any] | None, reserved: frozenset[str]) -> set[str]:
    """The root's zarr arrays: those on record and any top-level zarr array found."""
    names = set(state.get("vars", {})) | set(state.get("coords", [])) if state else set()
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if entry.name.startswith(".") or entry.name in reserved or not entry.is_dir():
                continue
            with contextlib.suppress(OSError, ValueError):
                if _meta(Path(entry.path)).get("node_type") == "array":
                    names.add(entry.name)
    return names - reserved


def _clear_cut_short(target: Path) -> None:
    """Remove an array folder a killed write left without its metadata (zarr files only:
    ``zarr.json`` and chunks under ``c/``), so the rewrite can make it again."""
    if not target.is_dir() or target.is_symlink():
        return
    for f in target.rglob("*"):
        rel = f.relative_to(target).parts
        if f.is_file() and rel != ("zarr.json",) and rel[0] != "c":
            return  # not a folder of ours: left alone, and mkdir names it
    remove_tree(target)


def reset(path: Path, reserved: frozenset[str]) -> None:
    """Remove the root (its group metadata and arrays); the parts are not touched."""
    for name in _root_names(path, _load_state(path), reserved):
        remove_tree(path / name)
    with contextlib.suppress(FileNotFoundError):
        (path / "zarr.json").unlink()


def _chunk_ok(path: Path) -> bool:
    """A chunk written with the crc32c codec: its last 4 bytes are the CRC-32C of the rest."""
    import google_crc32c

    data = path.read_bytes()
    return len(data) >= 4 and google_crc32c.value(data[:-4]) == int.from_bytes(data[-4:], "little")


def _checked(path: Path, state: Mapping[str, Any]) -> bool:
    """Every metadata file of the root parses and every chunk passes its checksum."""
    try:
        json.loads((path / "zarr.json").read_text(encoding="utf-8"))
        for name in [*state.get("vars", {}), *state.get("coords", [])]:
            json.loads((path / name / "zarr.json").read_text(encoding="utf-8"))
            for chunk in (path / name / "c").rglob("*") if (path / name / "c").exists() else ():
                if chunk.is_file() and not _chunk_ok(chunk):
                    return False
            if (path / name / "c").is_file() and not _chunk_ok(path / name / "c"):
                return False
    except (OSError, ValueError):
        return False
    return True


def _intact(path: Path, state: Mapping[str, Any]) -> bool:
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


def sync(
    path: Path, plan: RootPlan, out: Output, reserved: frozenset[str], *, verify: bool = False
) -> None:
    """Bring the root of the store at ``path`` up to ``plan`` (see the module doc).

    With ``verify``, every chunk of the root is checked against its CRC-32C first (a
    damaged root is rewritten from the parts).
    """
    state = _load_state(path)
    if not plan.steps:
        if state is not None or (path / "zarr.json").exists():
            reset(path, reserved)
            _save_state(out, {"state": "clean", "steps": []})
        return
    outline = {
        "steps": list(plan.steps),
        "sources": _sources_text(plan),
        "attrs": json.loads(json.dumps(plan.attrs)),
        "coords_values": json.loads(json.dumps(plan.coords)),
    }
    usable = (
        state is not None
        and state.get("state") == "clean"
        and "vars" in state
        and (not verify or (_intact(path, state) and _checked(path, state)))
    )
    if usable and state is not None and all(state.get(k) == v for k, v in outline.items()):
        return
    if state is not None or (path / "zarr.json").exists():
        _save_state(out, {"state": "updating"})  # until the end: cut short, it is redone
    previous = dict(state) if usable and state is not None else None
    members: dict[str, Any] | None = None
    try:
        if not usable or state is None:
            raise _Rewrite
        try:  # every array's metadata, as consolidated at the last update
            members = dict(_meta(path)["consolidated_metadata"]["metadata"])
        except (OSError, ValueError, KeyError, TypeError):
            raise _Rewrite from None
        new_state = _update(path, plan, state, members)
    except _Rewrite:
        new_state = _rewrite(path, plan, out, reserved)
        previous, members = None, None
    _finish(path, plan, out, previous, members)
    _save_state(out, {**new_state, **outline, "state": "clean"})


def _sources_text(plan: RootPlan) -> dict[str, dict[str, str]]:
    """Each (step, measure) source named by its part folder and that part's record checksum."""
    return {
        str(step): {
            m: plan.tokens.get(step, {}).get(m, str(src))
            for m, src in sorted(plan.sources[step].items())
        }
        for step in plan.steps
    }


def _combine(into: dict[str, Any], dropped: list[str], attrs: Mapping[str, Any]) -> None:
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


def _update(
    path: Path, plan: RootPlan, state: dict[str, Any], members: dict[str, Any]
) -> dict[str, Any]:
    import numpy as np
    import zarr

    old_steps: list[int] = list(state["steps"])
    old_sources: dict[str, dict[str, str]] = state["sources"]
    new_sources = _sources_text(plan)
    if any(s not in plan.steps for s in old_steps):
        raise _Rewrite  # a step was removed
    for s in old_steps:
        for m, token in old_sources.get(str(s), {}).items():
            if new_sources[str(s)].get(m) != token:
                raise _Rewrite  # a measure's data at a step was replaced or removed
    measures: dict[str, dict[str, Any]] = state["measures"]
    variables: dict[str, dict[str, Any]] = state["vars"]
    # what is new, and is the layout unchanged?
    added: list[tuple[int, str]] = [
        (s, m)
        for s in plan.steps
        for m in sorted(plan.sources[s])
        if m not in old_sources.get(str(s), {})
    ]
    described: dict[tuple[int, str], dict[str, Any]] = {}
    for s, m in added:
        if m not in measures:
            raise _Rewrite  # a new measure: new variables
        mine = {k: v for k, v in variables.items() if v["measure"] == m}
        desc = _describe(plan.sources[s][m], plan.files.get(s, {}).get(m))
        if {k for k, v in desc["arrays"].items() if v["data"]} != set(mine):
            raise _Rewrite
        for name, info in desc["arrays"].items():
            if name in mine:
                var = mine[name]
                if [info["dims"], info["shape"], info["dtype"]] != [
                    var["dims"][1:],
                    var["shape"],
                    var["part_dtype"],
                ]:
                    raise _Rewrite
            elif state["coord_sig"].get(name) != info["sig"]:
                raise _Rewrite  # a coordinate differs from the root's
        described[(s, m)] = desc
    holes = _holes(plan, variables)
    for name, info in variables.items():
        if holes[name] != info["holes"] and info["promotes"]:
            raise _Rewrite  # an integer variable's dtype changes with its missing steps
    # move the chunks of earlier steps to their new positions (only ever upwards)
    moves = [(i, plan.steps.index(s)) for i, s in enumerate(old_steps) if plan.steps.index(s) != i]
    for name in variables:
        base = path / name / "c"
        for i, j in sorted(moves, reverse=True):
            if os.path.lexists(base / str(i)):
                os.rename(base / str(i), base / str(j))
    # attrs, as xarray's drop_conflicts combines them over the steps
    changed: set[str] = set()
    for (_, m), desc in sorted(described.items()):
        before = json.dumps(measures[m], sort_keys=True)
        _combine(measures[m]["attrs"], measures[m]["dropped"], desc["attrs"])
        if json.dumps(measures[m], sort_keys=True) != before:
            changed |= {n for n, v in variables.items() if v["measure"] == m}
        for name, info in desc["arrays"].items():
            if name in variables:
                var = variables[name]
                before = json.dumps([var["attrs"], var["dropped"]], sort_keys=True)
                _combine(var["attrs"], var["dropped"], _user_attrs(info["attrs"]))
                if json.dumps([var["attrs"], var["dropped"]], sort_keys=True) != before:
                    changed.add(name)
    # the new shape and attrs: edited in each array's metadata (no data rewritten)
    n = len(plan.steps)
    metas: dict[str, dict[str, Any]] = {}
    for name, var in variables.items():
        if name not in members:
            raise _Rewrite
        meta = members[name]
        edited = meta["shape"][0] != n or name in changed
        meta["shape"][0] = n
        if name in changed:
            cf = {k: v for k, v in meta.get("attributes", {}).items() if k in _CF_KEYS}
            meta["attributes"] = {**_var_attrs(measures[var["measure"]], var), **cf}
        if edited:
            _write_json(path / name / "zarr.json", meta)
        metas[name] = meta
        var["holes"] = holes[name]
    # the new data: each chunk of a part is the root's chunk at that step, byte for byte,
    # unless the root stores the variable with another dtype (an int with missing steps)
    for (s, m), desc in sorted(described.items()):
        pos = plan.steps.index(s)
        for name in desc["arrays"]:
            if name not in variables:
                continue
            src_dir = plan.sources[s][m] / name
            if _link_chunk(src_dir, path / name, pos, metas[name]):
                continue
            src = zarr.open_array(src_dir, mode="r", zarr_format=3)
            dst = zarr.open_array(path / name, mode="r+", zarr_format=3)
            dst = dst.with_config({"write_empty_chunks": True})  # every chunk exists
            dst[pos, ...] = np.asarray(src[...]).astype(dst.dtype, copy=False)
    state.update(steps=list(plan.steps), sources=new_sources)
    return state


def _write_json(path: Path, value: Any, *, sort_keys: bool = False) -> None:
    """Write a small JSON file of the root in place, as zarr writes its metadata.

    Formatted as zarr formats it (indent 2), so a file edited here has the bytes zarr
    would have written. Not atomic, like zarr's own writes: the root is marked
    ``updating`` meanwhile, and an update cut short is redone from the parts.
    """
    path.write_text(json.dumps(value, indent=2, sort_keys=sort_keys), encoding="utf-8")


def _link_chunk(src: Path, dst: Path, pos: int, dst_meta: Mapping[str, Any]) -> bool:
    """Make the part's one chunk the root's chunk at ``pos``; ``False`` if their encodings differ.

    With the same dtype and codecs, the chunk of shape ``(1, *shape)`` has the same bytes
    as the part's chunk of ``shape``: the file is hard-linked (copied where links fail),
    so the root takes no extra space.
    """
    src_meta = _meta(src)
    shape = list(src_meta["shape"])
    chunks = src_meta["chunk_grid"]["configuration"]["chunk_shape"]
    same = (
        src_meta["data_type"] == dst_meta["data_type"]
        and src_meta["codecs"] == dst_meta["codecs"]
        and src_meta.get("chunk_key_encoding") == dst_meta.get("chunk_key_encoding")
        and dst_meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, *chunks]
        and all(c >= max(1, n) for c, n in zip(chunks, shape, strict=True))
    )
    sep = (dst_meta.get("chunk_key_encoding") or {}).get("configuration", {}).get("separator")
    if not same or sep != "/":
        return False
    key = "/".join(["c", *("0" for _ in shape)])
    target = dst.joinpath("c", str(pos), *("0" for _ in shape))
    if not (src / key).is_file():
        return False
    if os.path.lexists(target):
        remove_tree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _link(src / key, target)
    return True


def _holes(plan: RootPlan, variables: Mapping[str, Mapping[str, Any]]) -> dict[str, bool]:
    return {
        name: any(info["measure"] not in plan.sources[s] for s in plan.steps)
        for name, info in variables.items()
    }


_CF_KEYS = ("_FillValue", "coordinates", "missing_value", "units", "calendar", "dtype")


def _user_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k not in _CF_KEYS}


def _var_attrs(measure: Mapping[str, Any], var: Mapping[str, Any]) -> dict[str, Any]:
    from mechmoe.core.provenance import RESERVED

    kept = {k: v for k, v in measure["attrs"].items() if k not in RESERVED}
    return {**kept, **var["attrs"], "measure": var["measure"]}


def _rewrite(path: Path, plan: RootPlan, out: Output, reserved: frozenset[str]) -> dict[str, Any]:
    """Write the whole root from the parts, and the state an incremental update needs."""
    import dask

    reset(path, reserved)
    state, descs = _state_from_parts(plan)
    with contextlib.suppress(_Rewrite):
        _create(path, plan, state, descs, out, reserved)
        return state
    reset(path, reserved)
    ds = plan.assemble()
    clash = sorted(set(map(str, ds.variables)) & reserved)
    if clash:
        raise ValueError(f"variable {clash[0]!r} would overwrite the store's own {clash[0]}")
    # coords in memory: with compute=False only they are written, not the (dask) data
    ds = ds.assign_coords({c: ds[c].load() for c in ds.coords if c not in ds.dims})
    enc = checksummed_zarr_encoding(ds)
    for name, var in ds.variables.items():
        if name in ds.data_vars and var.dims[:1] == (STEP,):
            # one chunk per step: a step lands by linking (or moving) its own files
            ds[name] = var.chunk({d: 1 if d == STEP else -1 for d in var.dims})
            enc[str(name)]["chunks"] = (1, *(max(1, n) for n in var.shape[1:]))
        elif name not in STEP_COORDS:
            enc[str(name)]["chunks"] = tuple(max(1, n) for n in var.shape)  # as in the parts
    out.own("zarr.json")
    for name in ds.variables:
        out.own(str(name))
    with warnings.catch_warnings(), dask.config.set(scheduler="synchronous"):
        warnings.simplefilter("ignore")
        # the arrays (and the coords' data); the variables' chunks are the parts' files
        ds.to_zarr(
            path,
            mode="a",
            consolidated=False,
            zarr_format=3,
            encoding=enc,
            write_empty_chunks=True,
            compute=False,
        )
        _fill(path, plan, ds)
    state["coords"] = sorted(str(c) for c in ds.coords)
    return state


def _state_from_parts(
    plan: RootPlan,
) -> tuple[dict[str, Any], dict[tuple[int, str], dict[str, Any]]]:
    """What an incremental update compares new parts with, from every part's metadata."""
    measures: dict[str, dict[str, Any]] = {}
    variables: dict[str, dict[str, Any]] = {}
    coord_sig: dict[str, str] = {}
    descs = {}
    for s in plan.steps:
        for m, src in sorted(plan.sources[s].items()):
            desc = descs[(s, m)] = _describe(src, plan.files.get(s, {}).get(m))
            entry = measures.setdefault(m, {"attrs": {}, "dropped": []})
            _combine(entry["attrs"], entry["dropped"], desc["attrs"])
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
                _combine(var["attrs"], var["dropped"], _user_attrs(info["attrs"]))
    holes = _holes(plan, variables)
    for name, var in variables.items():
        var["holes"] = holes[name]
        var["promotes"] = _promotes(var["part_dtype"])
    state = {
        "steps": list(plan.steps),
        "sources": _sources_text(plan),
        "measures": measures,
        "vars": variables,
        "coord_sig": coord_sig,
    }
    return state, descs


def _create(
    path: Path,
    plan: RootPlan,
    state: dict[str, Any],
    descs: Mapping[tuple[int, str], Mapping[str, Any]],
    out: Output,
    reserved: frozenset[str],
) -> None:
    """Make the root from the parts' own arrays, when that is what xarray would write.

    Every step has every variable and each coordinate is the same in every part: then a
    variable's metadata is its part's with ``step`` put in front, and its chunks are the
    parts' files. Anything else raises :class:`_Rewrite` (xarray writes the root).
    """
    import copy

    variables: dict[str, dict[str, Any]] = state["vars"]
    if any(v["holes"] for v in variables.values()):
        raise _Rewrite
    coords: dict[str, tuple[list[str], Path]] = {}  # name -> (dims, the part's array)
    for (s, m), desc in descs.items():
        for name, info in desc["arrays"].items():
            if name in reserved or name in STEP_COORDS:
                raise _Rewrite
            if not info["data"]:
                if info["sig"] != state["coord_sig"][name]:
                    raise _Rewrite  # a coordinate differs between parts: outer join
                coords.setdefault(name, (info["dims"], plan.sources[s][m] / name))
    non_dim = {c: d for c, (d, _) in coords.items() if d != [c]}
    non_dim.update({c: [STEP] for c in STEP_COORDS[1:]})
    attached = set()
    metas = {}
    for name, var in variables.items():
        s = next(st for st in plan.steps if var["measure"] in plan.sources[st])
        meta = copy.deepcopy(_meta(plan.sources[s][var["measure"]] / name))
        dims = [STEP, *meta.get("dimension_names", [])]
        listed = sorted(c for c, d in non_dim.items() if c not in dims and set(d) <= set(dims))
        attached |= set(listed)
        cf = {k: v for k, v in meta.get("attributes", {}).items() if k == "_FillValue"}
        meta["shape"] = [len(plan.steps), *meta["shape"]]
        grid = meta["chunk_grid"]["configuration"]
        grid["chunk_shape"] = [1, *grid["chunk_shape"]]
        meta["dimension_names"] = dims
        meta["attributes"] = {
            **_var_attrs(state["measures"][var["measure"]], var),
            **({"coordinates": " ".join(listed)} if listed else {}),
            **cf,
        }
        metas[name] = meta
    if set(non_dim) - attached:
        raise _Rewrite  # a coordinate of no variable: xarray lists it on the group
    out.own("zarr.json")
    for name, (_, src) in coords.items():
        out.own(name)
        target = path / name
        _clear_cut_short(target)
        target.mkdir()
        for f in src.rglob("*"):
            if f.is_file():
                dst = target / f.relative_to(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                _link(f, dst)
    for name, meta in metas.items():
        out.own(name)
        _clear_cut_short(path / name)
        (path / name).mkdir()
        _write_json(path / name / "zarr.json", meta)
        for pos, step in enumerate(plan.steps):
            src = plan.sources[step][variables[name]["measure"]] / name
            if not _link_chunk(src, path / name, pos, meta):
                raise _Rewrite
    state["coords"] = sorted([*coords, *STEP_COORDS])


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _fill(path: Path, plan: RootPlan, ds: xr.Dataset) -> None:
    """The data of every variable of a freshly made root: the parts' chunks, linked.

    A variable stored with another dtype than its parts (an int with missing steps) is
    written from ``ds`` instead, step by step.
    """
    import numpy as np
    import zarr

    metas = {str(name): _meta(path / str(name)) for name in ds.data_vars}
    for pos, step in enumerate(plan.steps):
        for _, src in sorted(plan.sources[step].items()):
            for entry in sorted(os.scandir(src), key=lambda e: e.name):
                name = entry.name
                if name not in metas or not entry.is_dir():
                    continue
                if _link_chunk(Path(entry.path), path / name, pos, metas[name]):
                    continue
                dst = zarr.open_array(path / name, mode="r+", zarr_format=3)
                dst = dst.with_config({"write_empty_chunks": True})
                dst[pos, ...] = np.asarray(ds[name].isel({STEP: pos}).values).astype(
                    dst.dtype, copy=False
                )


#: Chunk length of the ``step`` coords (fixed, so a store's bytes do not depend on history).
STEP_CHUNK = 4096


def _write_in_place(
    path: Path, values: Mapping[str, Any], members: dict[str, Any] | None = None
) -> bool:
    """Write the step coords into their arrays if they have the right dtype; else ``False``.

    Each is one chunk of :data:`STEP_CHUNK` values, encoded here as zarr encodes it
    (little-endian bytes padded with the fill value, zstd level 0, CRC-32C appended):
    the same bytes, without opening zarr arrays (tests/trajectory/test_root.py compares).
    """
    import numpy as np

    metas = {}
    for name, data in values.items():
        try:
            meta = members[name] if members is not None else _meta(path / name)
        except (OSError, ValueError, KeyError):
            return False
        if (
            meta.get("data_type") != _data_type(data.dtype)
            or meta["chunk_grid"]["configuration"]["chunk_shape"] != [STEP_CHUNK]
            or [c.get("name") for c in meta.get("codecs", [])] != ["bytes", "zstd", "crc32c"]
            or len(data) > STEP_CHUNK
        ):
            return False  # e.g. a longer revision name: the array is made again
        metas[name] = meta
    for name, meta in metas.items():
        data = np.asarray(values[name])
        fill = "" if data.dtype.kind == "U" else float(meta["fill_value"])
        chunk = np.full(STEP_CHUNK, fill, dtype=data.dtype)
        chunk[: len(data)] = data
        (path / name / "c").mkdir(exist_ok=True)
        (path / name / "c" / "0").write_bytes(_encode(chunk, meta))
        if meta["shape"] != [len(data)]:
            meta["shape"] = [len(data)]
            _write_json(path / name / "zarr.json", meta)
    return True


def _data_type(dtype: Any) -> Any:
    if dtype.kind == "U":
        return {"name": "fixed_length_utf32", "configuration": {"length_bytes": dtype.itemsize}}
    return str(dtype)


def _encode(chunk: Any, meta: Mapping[str, Any]) -> bytes:
    """One chunk through the codecs ``bytes`` (little endian), ``zstd``, ``crc32c``."""
    import google_crc32c
    from numcodecs import Zstd

    (zstd,) = [c for c in meta["codecs"] if c["name"] == "zstd"]
    conf = zstd.get("configuration", {})
    raw = chunk.astype(chunk.dtype.newbyteorder("<"), copy=False).tobytes()
    packed = Zstd(level=conf.get("level", 0), checksum=conf.get("checksum", False)).encode(raw)
    return bytes(packed) + google_crc32c.value(bytes(packed)).to_bytes(4, "little")


def _finish(
    path: Path,
    plan: RootPlan,
    out: Output,
    state: Mapping[str, Any] | None,
    members: dict[str, Any] | None,
) -> None:
    """Write the step coords (if they changed) and the group's attrs and consolidated metadata.

    ``members`` is every array's metadata as it now is (``None``: read them all).
    """
    import numpy as np
    import xarray as xr

    values = {
        STEP: np.asarray(plan.steps, dtype=np.int64),
        "tokens": np.asarray(plan.coords["tokens"], dtype=np.float64),
        "revision": np.asarray(plan.coords["revision"], dtype=str),
        "weights_hash": np.asarray(plan.coords["weights_hash"], dtype=str),
    }
    unchanged = (
        state is not None
        and state.get("steps") == plan.steps
        and state.get("coords_values") == json.loads(json.dumps(plan.coords))
        and all((path / name / "zarr.json").is_file() for name in STEP_COORDS)
    )
    if unchanged:
        pass
    elif _write_in_place(path, values, members):
        pass
    else:
        members = None
        for name in STEP_COORDS:
            remove_tree(path / name)
        coords = xr.Dataset(
            coords={STEP: values[STEP], **{k: (STEP, v) for k, v in values.items() if k != STEP}}
        )
        enc = checksummed_zarr_encoding(coords)
        for name in STEP_COORDS:
            enc[name]["chunks"] = (STEP_CHUNK,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coords.to_zarr(
                path,
                mode="a",
                consolidated=False,
                zarr_format=3,
                encoding=enc,
                write_empty_chunks=True,
            )
        for name in STEP_COORDS:
            out.own(name)
    # the group: the Dataset's attrs, and every array's metadata consolidated in it
    if members is None:
        members = {}
        for entry in os.scandir(path):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            with contextlib.suppress(OSError, ValueError):
                meta = _meta(Path(entry.path))
                if meta.get("node_type") == "array" and meta.get("zarr_format") == 3:
                    members[entry.name] = meta
    members = dict(sorted(members.items()))
    group = {
        "attributes": json.loads(json.dumps(plan.attrs)),
        "zarr_format": 3,
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": members},
        "node_type": "group",
    }
    _write_json(path / "zarr.json", group)
    out.own("zarr.json")


__all__ = ["STATE", "STEP_COORDS", "RootPlan", "reset", "sync"]
