"""``mechmoe analyze``: a trajectory store's statistics and headline figures.

Prints the headline figures (top-q backbone share, consolidation step, HIT@k drop with
the top-n heads masked vs n random heads) of one run, or of two runs side by side with
``--compare``, and writes every statistic as one Dataset with ``--out``. The table's rows
are :func:`mechmoe.report.headline_rows`, the ones ``mechmoe demo`` prints and the report
draws, plus the random control's spread over its draws.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
import xarray as xr
from rich.table import Table

from mechmoe.analysis import headline, summarize_run
from mechmoe.cli._common import console, err_console
from mechmoe.core.errors import InvalidInputError
from mechmoe.ops.results import check_output_path, save_result
from mechmoe.report.headline import counted, headline_rows
from mechmoe.trajectory import open_store

app = typer.Typer()

RunArg = Annotated[
    Path, typer.Argument(help="Trajectory store (.zarr) written by 'mechmoe trajectory'.")
]
CompareOpt = Annotated[
    Path | None,
    typer.Option("--compare", "-c", help="A second store shown side by side (e.g. the dense run)."),
]
QOpt = Annotated[
    float,
    typer.Option("--q", help="Backbone fraction: top max(1, ceil(q*N)) neurons.", min=0, max=1),
]
TauOpt = Annotated[
    float,
    typer.Option("--tau", help="Consolidation threshold on Spearman rho vs the final step."),
]
KOpt = Annotated[
    int | None,
    typer.Option("--k", help="Top-k size for Jaccard@k (default: the backbone size).", min=1),
]
NMaskedOpt = Annotated[
    int, typer.Option("--n-masked", help="Masked-head count the headline drop is read at.", min=1)
]
NamesOpt = Annotated[
    str | None,
    typer.Option("--names", help="Column names, comma-separated (default: the store names)."),
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Write the run's statistics to a .nc file or .zarr folder."),
]
CompareOutOpt = Annotated[
    Path | None,
    typer.Option("--compare-out", help="Write the compared run's statistics (.nc or .zarr)."),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an earlier mechmoe result at --out.")
]


def _names(names: str | None, paths: list[Path]) -> list[str]:
    if names is not None:
        out = [n.strip() for n in names.split(",")]
        if len(out) != len(paths) or len(set(out)) != len(out) or not all(out):
            raise InvalidInputError(
                f"--names {names!r}: give {len(paths)} different comma-separated names"
            )
        return out
    stems = [p.name.removesuffix(".zarr") or str(p) for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def _spread_row(heads: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The random control's spread over its draws, as one extra headline row (none if unknown)."""
    stds = [h["hit_drop_random_std"] for h in heads]
    if all(math.isnan(x) for x in stds):
        return []
    k = heads[0]["hit_k"] or "k"
    return [
        (
            f"HIT@{k} drop, random heads: std over draws",
            *("n/a" if math.isnan(x) else f"± {100 * x:.1f}%" for x in stds),
        )
    ]


def _rows(stores: list[xr.Dataset], heads: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The headline table's rows: :func:`mechmoe.report.headline_rows` (what ``mechmoe demo``
    prints and the report draws) at the one masked-head count, plus the control's spread."""
    return headline_rows(stores, [heads], extra=_spread_row(heads))


@app.command("analyze")
def analyze(
    run: RunArg,
    compare: CompareOpt = None,
    q: QOpt = 0.01,
    tau: TauOpt = 0.9,
    k: KOpt = None,
    n_masked: NMaskedOpt = 10,
    names: NamesOpt = None,
    out: OutOpt = None,
    compare_out: CompareOutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Statistics of a trajectory store: backbone, consolidation, robustness, routing."""
    if compare_out is not None and compare is None:
        raise InvalidInputError("--compare-out needs --compare STORE: there is no compared run")
    if not 0 < q <= 1:
        raise InvalidInputError(f"--q {q}: the backbone fraction must lie in (0, 1], e.g. 0.01")
    paths = [run] + ([compare] if compare is not None else [])
    labels = _names(names, paths)
    outs = [out, compare_out]
    targets = [o for o in outs if o is not None]
    if len({p.resolve() for p in targets}) != len(targets):
        raise InvalidInputError("--out and --compare-out name the same path; give two paths")
    for target in targets:
        check_output_path(target, overwrite=overwrite)  # before any work
    stores = [open_store(p) for p in paths]
    summaries = []
    for label, ds in zip(labels, stores, strict=True):
        with err_console.status(f"analysing {label}…", spinner="dots"):
            summaries.append(summarize_run(ds, q=q, k=k, tau=tau, n_masked=n_masked))
    heads = [headline(s) for s in summaries]
    table = Table(title="trajectory statistics")
    table.add_column("figure")
    for label, h in zip(labels, heads, strict=True):
        table.add_column(f"{label}\n{h['model']}" if h["model"] else label, justify="right")
    for row in _rows(stores, heads):
        table.add_row(*row)
    console.print(table)
    for label, h in zip(labels, heads, strict=True):
        if h["n_steps"] < 2:
            console.print(
                f"[dim]{label}: {counted(h['n_steps'], 'checkpoint')}: no backbone share or "
                "consolidation step (they compare checkpoints)[/]",
                highlight=False,
            )
    for label, s in zip(labels, summaries, strict=True):
        if s.attrs.get("absent"):
            console.print(f"[dim]{label}: not computed: {s.attrs['absent']}[/]", highlight=False)
    for target, s in zip(outs, summaries, strict=False):
        if target is not None:
            path = save_result(s, target, overwrite=overwrite)
            console.print(f"wrote {path}", highlight=False)


__all__ = ["analyze", "app"]
