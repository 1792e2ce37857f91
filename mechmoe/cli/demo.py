"""``mechmoe demo``: the miniature study, end to end (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechmoe.cli._common import console
from mechmoe.cli._loading import load_options
from mechmoe.model import LoadOptions
from mechmoe.report.headline import counted
from mechmoe.study import demo as study

app = typer.Typer()


@app.command("demo")
@load_options(fields=("backend",))
def demo(
    options: LoadOptions,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Report folder (default: in the cache, replaced each run)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier report at --out.")
    ] = False,
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Cache root (default: $MECHMOE_CACHE or the user cache)."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="CPU cores to use: the two models train side by side and the sweeps measure "
            "this many checkpoints at once, one thread each (1: all in this process).",
            min=1,
        ),
    ] = 2,
) -> None:
    """Run the miniature study end to end: pre-train, sweep, report; print the headline table.

    Pre-trains a tiny MoE and a tiny dense model (cached), sweeps every measure over their
    checkpoints with --backend (each backend has its own cached sweeps; the zoo is shared),
    and writes a report comparing them.
    """
    # study.run_demo looked up at call time: tests run the command on a smaller study
    result = study.run_demo(
        study.DemoConfig(),
        root=root,
        out=out,
        overwrite=overwrite,
        workers=workers,
        options=options,
    )
    table = Table(title="miniature study: MoE vs dense (measured)")
    table.add_column("measure")
    table.add_column("MoE", justify="right")
    table.add_column("dense", justify="right")
    for row in result.rows:
        table.add_row(*row)
    console.print(table)
    checks = Table(title="does the miniature show the paper's pattern?")
    for col in ("paper's claim", "measured here", "holds?"):
        checks.add_column(col)
    for claim, measured, verdict in result.checks:
        style = {"yes": "green", "no": "red"}.get(verdict, "")
        checks.add_row(claim, measured, f"[{style}]{verdict}[/]" if style else verdict)
    console.print(checks)
    shown = sum(v == "yes" for _, _, v in result.checks)
    if shown < len(result.checks):
        console.print(
            f"The miniature shows {shown} of the paper's {counted(len(result.checks), 'claim')}; "
            "the report says which, with the measurements."
        )
    s = result.seconds
    console.print(
        f"time: zoo {s['zoo']:.0f} s, sweep {s['sweep']:.0f} s "
        f"({counted(sum(result.swept.values()), 'checkpoint')} measured with {result.backend}), "
        f"report {s['report']:.0f} s, total {s['total']:.0f} s",
        highlight=False,
    )
    console.print(f"report: {result.report}", highlight=False, soft_wrap=True)


__all__ = ["app", "demo"]
