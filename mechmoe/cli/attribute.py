"""``mechmoe attribute``: Gated-LPI scores for a prompt file or a probe, as a table and a file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
import xarray as xr
from rich.table import Table

from mechmoe._types import Level, Precision, Target
from mechmoe.cli._common import (
    OverwriteOpt,
    PromptsOpt,
    TemplateOpt,
    choice,
    console,
    err_console,
)
from mechmoe.cli._inputs import load_probe_noting, read_prompts_noting
from mechmoe.cli._loading import ModelRequest, load_options
from mechmoe.core.errors import InvalidInputError
from mechmoe.ops.attribution import attribute as run_attribute
from mechmoe.ops.results import TopItem, check_output_path, save_result, top_items
from mechmoe.probes import gold_token_ids

app = typer.Typer()

LevelOpt = choice(
    Level,
    "--level",
    "-l",
    help="What to score: neurons, experts, heads, attention or FFN sub-layers, or both "
    "sub-layers of every layer.",
)
TargetOpt = choice(
    Target,
    "--target",
    help="top1 (the model's prediction) or gold (the object's first token; of several gold "
    "objects, the one the model ranks highest).",
)
PrecisionOpt = choice(
    Precision,
    "--precision",
    help="exact, or certified (each score within --tolerance, proven; 'bounded' is its old name).",
)


def parse_bytes(text: str) -> int:
    """``"4GiB"`` → 4294967296 (k, M, G, T with or without ``i``/``B``; plain numbers are bytes).

    Examples
    --------
    >>> parse_bytes("512MiB"), parse_bytes("2k"), parse_bytes("100")
    (536870912, 2048, 100)
    """
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    s = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        number = float(s[:-1]) * units[s[-1]] if s and s[-1] in units else float(s)
        if not math.isfinite(number) or number < 1:
            raise ValueError
        return int(number)
    except ValueError:
        raise InvalidInputError(
            f"--memory-budget {text!r}: use a positive number of bytes, e.g. 512MiB or 4GiB"
        ) from None


def _table(ds: xr.Dataset, items: list[TopItem], title: str) -> Table:
    level = ds.attrs["level"]
    n = int(ds.attrs["n_prompts"])
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column(level)
    table.add_column("LPI (mean)", justify="right")
    if level in ("neuron", "expert"):
        table.add_column("chosen", justify="right")
    if level == "neuron":
        table.add_column("promotes")
    for it in items:
        row = [str(it.rank), it.label, f"{it.score:+.4f}"]
        if level in ("neuron", "expert"):
            row.append("" if it.n_chosen is None else f"{it.n_chosen}/{n}")
        if level == "neuron":
            row.append(" ".join(repr(t) for t in it.tokens))
        table.add_row(*row)
    return table


@app.command("attribute")
@load_options()
def attribute(
    model: ModelRequest,
    prompts: PromptsOpt = None,
    probe: Annotated[
        str | None,
        typer.Option("--probe", help="Bundled probe name(s), comma-separated, or 'all'."),
    ] = None,
    level: LevelOpt = "neuron",
    target: TargetOpt = "top1",
    precision: PrecisionOpt = "exact",
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance",
            help="Error bound per score in certified mode (1e-6: below fp32 rounding of the "
            "exact sum).",
        ),
    ] = 1e-4,
    top: Annotated[int, typer.Option("--top", "-n", help="Rows of the printed table.", min=1)] = 20,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the result to a .zarr folder or .nc file."),
    ] = None,
    per_prompt: Annotated[
        bool, typer.Option("--per-prompt", help="Also store per-prompt scores.")
    ] = False,
    reference_compat: Annotated[
        bool,
        typer.Option(
            "--reference-compat", help="The published code's final norm (RMS form, eps 1e-6)."
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Prompts per forward pass.", min=1)
    ] = 16,
    memory_budget: Annotated[
        str, typer.Option("--memory-budget", help="Budget for the engine's temporaries, e.g. 4GiB.")
    ] = "4GiB",
    template: TemplateOpt = 0,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Use only the first N prompts.", min=1)
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score neurons, experts, heads or layers by (Gated-)LPI and print the top ones."""
    if (prompts is None) == (probe is None):
        raise InvalidInputError("give exactly one of --prompts FILE or --probe NAME")
    budget = parse_bytes(memory_budget)
    if out is not None:
        check_output_path(out, overwrite=overwrite)
    if prompts is not None:
        read = read_prompts_noting(prompts, template=template, limit=limit)
        texts, objects = list(read.prompts), read.objects
    else:
        assert probe is not None
        ps = load_probe_noting(probe, template=template)
        ps = ps if limit is None else ps.head(limit)
        texts, objects = list(ps.prompts), ps.object_sets
    if target == "gold" and objects is None:
        raise InvalidInputError(
            "--target gold needs gold objects: use an LRE .json, --probe, or prompt<TAB>object lines"
        )

    handle = model.load()
    # one tuple of ids per prompt; for several objects attribution explains the one whose
    # first token the model ranks highest (docs/attribution.md)
    targets = gold_token_ids(handle.tokenizer, objects, texts) if target == "gold" else None
    ds = run_attribute(
        handle,
        texts,
        level=level,  # type: ignore[arg-type]
        target=target,  # type: ignore[arg-type]
        targets=targets,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
        tolerance=tolerance,
        memory_budget=budget,
        reference_compat=reference_compat,
        per_prompt=per_prompt,
        batch_size=batch_size,
        progress=True,
    )
    items = top_items(ds, top, model=handle)
    done = ds.attrs.get("precision", precision)  # levels without truncation run exact
    bound = (
        f", bound {ds.attrs['bound']:.2g}; of {ds.attrs.get('n_pairs', 0)} pairs, "
        f"{ds.attrs.get('n_moments', 0)} past the tail bound, "
        f"{ds.attrs.get('n_fallback', 0)} summed exactly"
        if done != "exact"
        else ""
    )
    title = (
        f"top {len(items)} {ds.attrs['level']} scores — {handle.name}, "
        f"{len(texts)} prompt{'' if len(texts) == 1 else 's'}, "
        f"target {target}, {done}{bound}"
    )
    console.print(_table(ds, items, title))
    if out is not None:
        save_result(ds, out, overwrite=overwrite)
        err_console.print(f"wrote {out}", highlight=False)


__all__ = ["app", "attribute", "parse_bytes"]
