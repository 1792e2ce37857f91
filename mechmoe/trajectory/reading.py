"""Reading a trajectory store: its config, the Dataset along ``step``, the root's plan.

:func:`open_store` reads the intact parts of a store as one Dataset (lazily, with dask);
:func:`root_plan` says what the store's root (:mod:`mechmoe.trajectory.root`) must hold,
computed from the same parts; :func:`export_netcdf` writes the Dataset to one file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mechmoe._types import STEP
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.provenance import RESERVED, as_attrs
from mechmoe.core.writer import prepare_output
from mechmoe.trajectory.layout import (
    CONFIG,
    DUPLICATES,
    FAILURES,
    KIND,
    MEASURES,
    for_zarr,
    try_json,
)
from mechmoe.trajectory.root_state import RootPlan
from mechmoe.trajectory.store_index import Damage, StoreIndex, check_store, damage_error, scan

if TYPE_CHECKING:
    import xarray as xr


def read_config(path: Path) -> dict[str, Any]:
    """The run config recorded when the store at ``path`` was created."""
    check_store(path)
    value, problem = try_json(path / CONFIG)
    if problem is not None or not isinstance(value, dict):
        raise damage_error(path, [Damage(CONFIG, problem or "not a config")], skip_hint=False)
    return value


def read_measure_configs(path: Path) -> dict[str, dict[str, Any]]:
    """Options of every measure ever run into the store at ``path``, by name (readable ones)."""
    folder = path / MEASURES
    if not folder.is_dir():
        return {}
    out = {}
    for p in sorted(folder.glob("*.json")):
        value, problem = try_json(p)
        if problem is None and not p.name.startswith(".") and isinstance(value, dict):
            out[p.stem] = value
    return out


def open_part(path: Path) -> xr.Dataset:
    """One measure's Dataset of a part, read lazily."""
    import xarray as xr

    return xr.open_zarr(path, consolidated=False)


def store_attrs(
    path: Path,
    index: StoreIndex,
    steps: list[int],
    measures: list[str],
    config: dict[str, Any] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The attrs of :func:`open_store`'s Dataset (and of the root).

    ``config`` and ``options`` are the store's, read from ``path`` when not given.
    """
    config = config or read_config(path)
    options = options if options is not None else read_measure_configs(path)
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


def assemble(root: Path, index: StoreIndex, steps: list[int]) -> xr.Dataset:
    """The Dataset of ``steps`` read from their intact parts (lazily, with dask)."""
    import numpy as np
    import xarray as xr

    per_measure: dict[str, list[xr.Dataset]] = {}
    used: list[int] = []
    for step in steps:
        state = index.steps[step]
        found = False
        for m in sorted(index.done(step)):
            src = state.source(m)
            if src is None:
                continue
            ds = open_part(src / f"{m}.zarr")
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
            "tokens": (STEP, np.array([as_float(r.get("tokens")) for r in recs], dtype=np.float64)),
            "revision": (STEP, np.array([str(r.get("revision") or "") for r in recs], dtype=str)),
            "weights_hash": (
                STEP,
                np.array([str(r.get("weights_hash") or "") for r in recs], dtype=str),
            ),
        }
    )
    out.attrs = store_attrs(root, index, used, sorted(per_measure))
    return out


def root_plan(
    path: Path,
    index: StoreIndex,
    config: dict[str, Any] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> RootPlan:
    """What the root of the store at ``path`` must hold: every measured step's intact parts.

    ``config`` and ``options`` are the store's, read from ``path`` when not given.
    """
    steps: list[int] = []
    sources: dict[int, dict[str, Path]] = {}
    tokens: dict[int, dict[str, str]] = {}
    coords: dict[str, list[Any]] = {"tokens": [], "revision": [], "weights_hash": []}
    files: dict[int, dict[str, dict[str, Any]]] = {}
    for step in index.measured():
        state = index.steps[step]
        found, marks = {}, {}
        for m in sorted(index.done(step)):
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
        coords["tokens"].append(as_float(rec.get("tokens")))
        coords["revision"].append(str(rec.get("revision") or ""))
        coords["weights_hash"].append(str(rec.get("weights_hash") or ""))
    measures = sorted(set().union(*sources.values())) if sources else []
    return RootPlan(
        steps=steps,
        sources=sources,
        coords=coords,
        attrs=store_attrs(path, index, steps, measures, config, options) if steps else {},
        assemble=lambda: assemble(path, index, steps),
        tokens=tokens,
        files=files,
    )


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
    check_store(root)
    if damaged not in ("raise", "skip"):
        raise InvalidInputError(f"damaged={damaged!r}: use 'raise' or 'skip'")
    index = scan(root, "full" if verify else "none")
    found = index.damage()
    meta = [d for d in found if d.step is None or d.file.startswith((DUPLICATES, FAILURES))]
    if found and (damaged == "raise" or meta):
        raise damage_error(root, found, skip_hint=damaged == "raise" and not meta)
    read_config(root)  # a lost config.json is damage even without verify
    skipped = set(index.damaged_steps())
    steps = [s for s in index.measured() if s not in skipped]
    if not steps:
        if skipped:
            raise damage_error(root, found, skip_hint=False)
        raise InvalidInputError(
            f"trajectory store {str(root)!r} has no measured checkpoint yet; run the sweep first"
        )
    out = assemble(root, index, steps)
    if skipped:
        out.attrs["damaged_steps"] = ",".join(str(s) for s in sorted(skipped))
    return out


def as_float(value: Any) -> float:
    """A record's number as a float (``None``: NaN)."""
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
    ds = for_zarr(ds)
    ds.attrs = {**ds.attrs, **marker(KIND)}
    with out.writing() as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    return out.path


__all__ = [
    "assemble",
    "export_netcdf",
    "open_store",
    "read_config",
    "read_measure_configs",
    "root_plan",
    "store_attrs",
]
