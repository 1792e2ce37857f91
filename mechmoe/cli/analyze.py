"""``mechmoe analyze``: a trajectory store's statistics and headline figures.

Prints the headline figures (top-q backbone share, consolidation step, HIT@k drop with
the top-n heads masked vs n random heads) of one run, or of two runs side by side with
``--compare``, and writes every statistic as one Dataset with ``--out``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from mechmoe.cli._common import console, err_console, run_user_errors

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
    from mechmoe.core.errors import InvalidInputError

    if names is not None:
        out = [n.strip() for n in names.split(",")]
        if len(out) != len(paths) or len(set(out)) != len(out) or not all(out):
            raise InvalidInputError(
                f"--names {names!r}: give {len(paths)} different comma-separated names"
            )
        return out
    stems = [p.name.removesuffix(".zarr") or str(p) for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _step(h: dict[str, Any]) -> str:
    if not math.isnan(h["consolidation_step"]):
        return f"{int(h['consolidation_step']):,}"
    if math.isnan(h["backbone_share"]) and h["n_steps"] > 1:
        return "n/a"  # no neuron scores
    return "n/a (one checkpoint)" if h["n_steps"] < 2 else "never"


def _rows(heads: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    h0 = heads[0]
    k = h0["hit_k"] or "k"
    q_pct = f"{100 * h0['q']:g}%"
    rows = [
        (
            f"top-{q_pct} backbone share of positive updates",
            [_pct(h["backbone_share"]) for h in heads],
        ),
        (
            f"consolidation step (Spearman vs final ≥ {h0['tau']:g})",
            [_step(h) for h in heads],
        ),
        (
            f"HIT@{k} drop, top-{h0['n_masked']} heads masked",
            [_pct(h["hit_drop_top"]) for h in heads],
        ),
        (
            f"HIT@{k} drop, {h0['n_masked']} random heads masked",
            [
                _pct(h["hit_drop_random"])
                + (
                    ""
                    if math.isnan(h["hit_drop_random_std"])
                    else f" ± {_pct(h['hit_drop_random_std'])}"
                )
                for h in heads
            ],
        ),
    ]
    return rows


@run_user_errors
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
    from rich.table import Table

    from mechmoe.analysis import headline, summarize_run
    from mechmoe.core.errors import InvalidInputError
    from mechmoe.ops.results import check_output_path, save_result
    from mechmoe.trajectory import open_store

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
    for figure, cells in _rows(heads):
        table.add_row(figure, *cells)
    console.print(table)
    for label, s in zip(labels, summaries, strict=True):
        if s.attrs.get("absent"):
            console.print(f"[dim]{label}: not computed: {s.attrs['absent']}[/]", highlight=False)
    for target, s in zip(outs, summaries, strict=False):
        if target is not None:
            path = save_result(s, target, overwrite=overwrite)
            console.print(f"wrote {path}", highlight=False)


__all__ = ["analyze"]
