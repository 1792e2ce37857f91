"""Writing a command's result, and the recall tables of probe, mask-heads and route."""

from __future__ import annotations

from pathlib import Path

import xarray as xr
from rich.table import Table

from mechmoe.cli._common import console
from mechmoe.ops.results import check_output_path, save_result
from mechmoe.probes import summarize


def check_out(out: Path | None, overwrite: bool = False) -> None:
    """Refuse an unusable ``--out`` before any work (nothing to do without one)."""
    if out is not None:
        check_output_path(out, overwrite=overwrite)


def save(ds: xr.Dataset, out: Path | None, overwrite: bool = False) -> None:
    """Write ``ds`` to ``--out`` (if given) and say where."""
    if out is None:
        return
    path = save_result(ds, out, overwrite=overwrite)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)


def compare_table(title: str, conditions: dict[str, xr.Dataset], k: int) -> Table:
    """Per-relation HIT@k / MRR of each condition, with the relative drop vs the first."""
    sums = {name: summarize(ds) for name, ds in conditions.items()}
    first = next(iter(sums.values()))
    table = Table(title=title)
    table.add_column("relation")
    table.add_column("items", justify="right")
    # items whose gold answer is a set of objects (scored by the best-ranked one)
    items_ds = next(iter(conditions.values()))
    multi = None
    if "n_objects" in items_ds.coords and int(items_ds["n_objects"].max()) > 1:
        several = items_ds["n_objects"].values > 1
        rel_of = items_ds["relation"].values
        multi = {r: int((several & (rel_of == r)).sum()) for r in set(rel_of.tolist())}
        multi["all"] = int(several.sum())
        table.add_column("multi-object", justify="right")
        table.caption = (
            "multi-object: items with several gold objects; HIT@k and MRR count the "
            "best-ranked of them"
        )
    names = list(sums)
    for name in names:
        table.add_column(f"HIT@{k} {name}" if len(names) > 1 else f"HIT@{k}", justify="right")
        table.add_column(f"MRR {name}" if len(names) > 1 else "MRR", justify="right")
    if len(names) > 1:
        table.add_column("drop", justify="right")
    for rel in first["relation"].values.tolist():
        row = [str(rel), str(int(first["count"].sel(relation=rel)))]
        if multi is not None:
            row.append(str(multi.get(str(rel), 0)))
        for name in names:
            s = sums[name]
            row += [
                f"{float(s['hit'].sel(relation=rel)):.3f}",
                f"{float(s['mrr'].sel(relation=rel)):.3f}",
            ]
        if len(names) > 1:
            before = float(first["hit"].sel(relation=rel))
            after = float(sums[names[-1]]["hit"].sel(relation=rel))
            row.append(f"{1 - after / before:+.1%}" if before > 0 else "n/a")
        table.add_row(*row)
    return table


def stack_conditions(conditions: dict[str, xr.Dataset]) -> xr.Dataset:
    """Item datasets of several conditions along a ``condition`` dim."""
    names = list(conditions)
    ds = xr.concat(
        [conditions[n] for n in names], dim="condition", coords="minimal", compat="override"
    )
    ds = ds.assign_coords(condition=names)
    ds.attrs = dict(next(iter(conditions.values())).attrs)
    return ds


__all__ = ["check_out", "compare_table", "save", "stack_conditions"]
