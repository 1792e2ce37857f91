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

What the root must hold and its bookkeeping are in :mod:`mechmoe.trajectory.root_state`,
the reading and writing of zarr files by hand in :mod:`mechmoe.trajectory.zarr_files`;
this module makes the update.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechmoe._types import STEP
from mechmoe.core.writer import Output, checksummed_zarr_encoding, remove_tree
from mechmoe.trajectory.root_state import (
    CF_KEYS,
    STATE,
    STEP_COORDS,
    RootPlan,
    checked,
    combine_attrs,
    find_holes,
    intact,
    load_state,
    reset,
    save_state,
    sources_text,
    state_from_parts,
    user_attrs,
    var_attrs,
)
from mechmoe.trajectory.zarr_files import (
    STEP_CHUNK,
    clear_cut_short,
    describe,
    link_chunk,
    read_meta,
    write_in_place,
    write_json,
)
from mechmoe.trajectory.zarr_files import link as _link

if TYPE_CHECKING:
    import xarray as xr


class _Rewrite(Exception):
    """The layout changes: rewrite the root from the parts."""


def sync(
    path: Path, plan: RootPlan, out: Output, reserved: frozenset[str], *, verify: bool = False
) -> None:
    """Bring the root of the store at ``path`` up to ``plan`` (see the module doc).

    With ``verify``, every chunk of the root is checked against its CRC-32C first (a
    damaged root is rewritten from the parts).
    """
    state = load_state(path)
    if not plan.steps:
        if state is not None or (path / "zarr.json").exists():
            reset(path, reserved)
            save_state(out, {"state": "clean", "steps": []})
        return
    outline = {
        "steps": list(plan.steps),
        "sources": sources_text(plan),
        "attrs": json.loads(json.dumps(plan.attrs)),
        "coords_values": json.loads(json.dumps(plan.coords)),
    }
    usable = (
        state is not None
        and state.get("state") == "clean"
        and "vars" in state
        and (not verify or (intact(path, state) and checked(path, state)))
    )
    if usable and state is not None and all(state.get(k) == v for k, v in outline.items()):
        return
    if state is not None or (path / "zarr.json").exists():
        save_state(out, {"state": "updating"})  # until the end: cut short, it is redone
    previous = dict(state) if usable and state is not None else None
    members: dict[str, Any] | None = None
    try:
        if not usable or state is None:
            raise _Rewrite
        try:  # every array's metadata, as consolidated at the last update
            members = dict(read_meta(path)["consolidated_metadata"]["metadata"])
        except (OSError, ValueError, KeyError, TypeError):
            raise _Rewrite from None
        new_state = _update(path, plan, state, members)
    except _Rewrite:
        new_state = _rewrite(path, plan, out, reserved)
        previous, members = None, None
    _finish(path, plan, out, previous, members)
    save_state(out, {**new_state, **outline, "state": "clean"})


def _update(
    path: Path, plan: RootPlan, state: dict[str, Any], members: dict[str, Any]
) -> dict[str, Any]:
    import numpy as np
    import zarr

    old_steps: list[int] = list(state["steps"])
    old_sources: dict[str, dict[str, str]] = state["sources"]
    new_sources = sources_text(plan)
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
        desc = describe(plan.sources[s][m], plan.files.get(s, {}).get(m))
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
    holes = find_holes(plan, variables)
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
        combine_attrs(measures[m]["attrs"], measures[m]["dropped"], desc["attrs"])
        if json.dumps(measures[m], sort_keys=True) != before:
            changed |= {n for n, v in variables.items() if v["measure"] == m}
        for name, info in desc["arrays"].items():
            if name in variables:
                var = variables[name]
                before = json.dumps([var["attrs"], var["dropped"]], sort_keys=True)
                combine_attrs(var["attrs"], var["dropped"], user_attrs(info["attrs"]))
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
            cf = {k: v for k, v in meta.get("attributes", {}).items() if k in CF_KEYS}
            meta["attributes"] = {**var_attrs(measures[var["measure"]], var), **cf}
        if edited:
            write_json(path / name / "zarr.json", meta)
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
            if link_chunk(src_dir, path / name, pos, metas[name]):
                continue
            src = zarr.open_array(src_dir, mode="r", zarr_format=3)
            dst = zarr.open_array(path / name, mode="r+", zarr_format=3)
            dst = dst.with_config({"write_empty_chunks": True})  # every chunk exists
            dst[pos, ...] = np.asarray(src[...]).astype(dst.dtype, copy=False)
    state.update(steps=list(plan.steps), sources=new_sources)
    return state


def _rewrite(path: Path, plan: RootPlan, out: Output, reserved: frozenset[str]) -> dict[str, Any]:
    """Write the whole root from the parts, and the state an incremental update needs."""
    import dask

    reset(path, reserved)
    state, descs = state_from_parts(plan)
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
        meta = copy.deepcopy(read_meta(plan.sources[s][var["measure"]] / name))
        dims = [STEP, *meta.get("dimension_names", [])]
        listed = sorted(c for c, d in non_dim.items() if c not in dims and set(d) <= set(dims))
        attached |= set(listed)
        cf = {k: v for k, v in meta.get("attributes", {}).items() if k == "_FillValue"}
        meta["shape"] = [len(plan.steps), *meta["shape"]]
        grid = meta["chunk_grid"]["configuration"]
        grid["chunk_shape"] = [1, *grid["chunk_shape"]]
        meta["dimension_names"] = dims
        meta["attributes"] = {
            **var_attrs(state["measures"][var["measure"]], var),
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
        clear_cut_short(target)
        target.mkdir()
        for f in src.rglob("*"):
            if f.is_file():
                dst = target / f.relative_to(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                _link(f, dst)
    for name, meta in metas.items():
        out.own(name)
        clear_cut_short(path / name)
        (path / name).mkdir()
        write_json(path / name / "zarr.json", meta)
        for pos, step in enumerate(plan.steps):
            src = plan.sources[step][variables[name]["measure"]] / name
            if not link_chunk(src, path / name, pos, meta):
                raise _Rewrite
    state["coords"] = sorted([*coords, *STEP_COORDS])


def _fill(path: Path, plan: RootPlan, ds: xr.Dataset) -> None:
    """The data of every variable of a freshly made root: the parts' chunks, linked.

    A variable stored with another dtype than its parts (an int with missing steps) is
    written from ``ds`` instead, step by step.
    """
    import numpy as np
    import zarr

    metas = {str(name): read_meta(path / str(name)) for name in ds.data_vars}
    for pos, step in enumerate(plan.steps):
        for _, src in sorted(plan.sources[step].items()):
            for entry in sorted(os.scandir(src), key=lambda e: e.name):
                name = entry.name
                if name not in metas or not entry.is_dir():
                    continue
                if link_chunk(Path(entry.path), path / name, pos, metas[name]):
                    continue
                dst = zarr.open_array(path / name, mode="r+", zarr_format=3)
                dst = dst.with_config({"write_empty_chunks": True})
                dst[pos, ...] = np.asarray(ds[name].isel({STEP: pos}).values).astype(
                    dst.dtype, copy=False
                )


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
    elif write_in_place(path, values, members):
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
                meta = read_meta(Path(entry.path))
                if meta.get("node_type") == "array" and meta.get("zarr_format") == 3:
                    members[entry.name] = meta
    members = dict(sorted(members.items()))
    group = {
        "attributes": json.loads(json.dumps(plan.attrs)),
        "zarr_format": 3,
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": members},
        "node_type": "group",
    }
    write_json(path / "zarr.json", group)
    out.own("zarr.json")


__all__ = ["STATE", "STEP_COORDS", "RootPlan", "reset", "sync"]
