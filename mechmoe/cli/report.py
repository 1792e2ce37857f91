"""``mechmoe report``: an HTML page with every trajectory figure, for one run or two side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechmoe.cli._common import console
from mechmoe.core.errors import InvalidInputError
from mechmoe.report import build_report

app = typer.Typer()


@app.command("report")
def report(
    run: Annotated[
        Path, typer.Argument(help="Trajectory store (.zarr) written by 'mechmoe trajectory'.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder to write.")],
    compare: Annotated[
        Path | None,
        typer.Option("--compare", "-c", help="A second store drawn beside the first (e.g. dense)."),
    ] = None,
    names: Annotated[
        str | None,
        typer.Option("--names", help="Run labels, comma-separated (default: the model names)."),
    ] = None,
    q: Annotated[
        float,
        typer.Option(
            "--q", help="Backbone fraction (top max(1, ceil(q*N)) neurons).", min=0, max=1
        ),
    ] = 0.01,
    tau: Annotated[
        float, typer.Option("--tau", help="Consolidation threshold on Spearman rho.")
    ] = 0.9,
    n_masked: Annotated[
        int, typer.Option("--n-masked", help="Masked-head count of the headline drop.", min=1)
    ] = 10,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier mechmoe report at --out.")
    ] = False,
) -> None:
    """Write OUT/index.html (figures inlined) and one PNG per figure."""
    labels = None
    if names is not None:
        labels = [n.strip() for n in names.split(",")]
        want = 2 if compare is not None else 1
        if len(labels) != want or not all(labels):
            raise InvalidInputError(f"--names {names!r}: give {want} comma-separated name(s)")
    index = build_report(
        run, compare, out, names=labels, q=q, tau=tau, n_masked=n_masked, overwrite=overwrite
    )
    console.print(f"report: {index}", highlight=False, soft_wrap=True)


__all__ = ["app", "report"]
