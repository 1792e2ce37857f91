"""``mechmoe adapters``: list the families and check the conformance identities."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from rich.table import Table

from mechmoe._types import Positions
from mechmoe.adapters.registry import NOT_EXPRESSIBLE
from mechmoe.cli._common import PromptsOpt, choice, console
from mechmoe.cli._inputs import read_prompts_noting
from mechmoe.cli._loading import load_model, load_options
from mechmoe.model import LoadOptions
from mechmoe.ops.conformance import IDENTITIES, check_model
from mechmoe.zoo.support import COLUMNS, support_markdown, support_rows
from mechmoe.zoo.tiny import TINY_FAMILIES

app = typer.Typer(
    help="Model-family adapters: list them, check them on a model.", no_args_is_help=True
)

PositionsOpt = choice(Positions, "--positions", help="'all' tokens (default) or only the 'last'.")


@app.command("list")
def list_cmd(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the table as markdown (docs/adapters.md).")
    ] = False,
    backends: Annotated[
        bool,
        typer.Option(
            "--backends/--no-backends",
            help="Check which families TransformerLens runs (on weightless copies; slower).",
        ),
    ] = True,
) -> None:
    """List every registered adapter: its router, layers, levels, edits and backends.

    The same table as docs/adapters.md ("Support table"), built from the registry.
    """
    if markdown:
        typer.echo(support_markdown(backends=backends), nl=False)
        return
    table = Table(title="mechmoe adapters")
    for col in COLUMNS:
        table.add_column(col, overflow="fold", no_wrap=col in ("architecture", "adapter"))
    for row in support_rows(backends=backends):
        table.add_row(*(cell.replace("`", "") for cell in row.cells()))
    console.print(table)
    refused = Table(title="refused: what the description cannot state yet")
    refused.add_column("architecture", no_wrap=True)
    refused.add_column("missing", overflow="fold")
    for arch, why in NOT_EXPRESSIBLE.items():
        refused.add_row(arch, why)
    console.print(refused)


@app.command("check")
@load_options()
def check_cmd(
    options: LoadOptions,
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to check (hub id, folder, .gguf, 'smollm2', 'tiny:FAMILY'). "
            "Default: every built-in tiny model.",
            show_default=False,
        ),
    ] = None,
    prompts: PromptsOpt = None,
    positions: PositionsOpt = "all",
) -> None:
    """Check the six conformance identities and print the worst error of each."""
    names = models or [f"tiny:{f}" for f in TINY_FAMILIES]
    prompt_list = list(read_prompts_noting(prompts).prompts) if prompts else None
    table = Table(title="conformance (worst |error|; ✓ within tolerance × max(1, scale))")
    table.add_column("model")
    table.add_column("adapter")
    for key in IDENTITIES:
        table.add_column(key, justify="right")
    table.add_column("result")
    all_ok = True
    notes = []
    for name in names:
        model = load_model(name, options)
        report = check_model(model, prompt_list, positions=positions)
        wheres = {r.where for r in report.results}
        noted = len(wheres) == 1 and all(math.isnan(r.max_abs_error) for r in report.results)
        if noted:  # the pass itself was not finite: one note, not the same words in every cell
            notes.append(f"{name}: the values are {wheres.pop()}, so no identity can hold")
        cells = []
        for r in report.results:
            mark = "[green]✓[/]" if r.passed else "[red]✗[/]"
            shown = "" if r.passed or noted else f" ({r.where})"
            cells.append(f"{r.max_abs_error:.1e} {mark}{shown}")
        ok = report.passed
        all_ok &= ok
        table.add_row(name, report.adapter, *cells, "[green]pass[/]" if ok else "[red]FAIL[/]")
    console.print(table)
    for note in notes:
        console.print(f"[red]{note}[/]", highlight=False)
    console.print("  ".join(f"[bold]{k}[/]: {v}" for k, v in IDENTITIES.items()), style="dim")
    if not all_ok:
        raise typer.Exit(1)


__all__ = ["app"]
