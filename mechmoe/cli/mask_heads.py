"""``mechmoe mask-heads``: relational recall with attention heads masked."""

from __future__ import annotations

from typing import Annotated

import typer
import xarray as xr
from rich.table import Table

from mechmoe._types import MaskMode, Target
from mechmoe.cli._common import BatchOpt, KOpt, OutOpt, OverwriteOpt, choice, console, parse_pairs
from mechmoe.cli._inputs import RelationsRequest, relation_options
from mechmoe.cli._loading import ModelRequest, load_options
from mechmoe.cli._results import check_out, compare_table, save, stack_conditions
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.interventions import MaskHeads
from mechmoe.ops.interventions import head_means
from mechmoe.ops.robustness import head_ranking, head_robustness
from mechmoe.probes import evaluate

app = typer.Typer()

ModeOpt = choice(MaskMode, "--mode", help="zero, or mean (each head's mean over the probe).")
TargetOpt = choice(Target, "--target", help="LPI target of the ranking: top1 or gold.")


def parse_grid(grid: str) -> list[int]:
    """``"1,2,5"`` → ``[1, 2, 5]``: the head counts of ``--grid``.

    Examples
    --------
    >>> parse_grid("1, 2,5")
    [1, 2, 5]
    """
    try:
        ns = [int(x) for x in grid.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError(f"--grid {grid!r}: write head counts, e.g. 1,2,5,10,20") from None
    if not ns:
        raise InvalidInputError("--grid is empty: write head counts, e.g. 1,2,5,10,20")
    return ns


@app.command("mask-heads")
@load_options()
@relation_options()
def mask_heads(
    model: ModelRequest,
    relations: RelationsRequest,
    top: Annotated[
        int | None,
        typer.Option("--top", help="Mask the N heads with the highest head-level LPI.", min=1),
    ] = None,
    heads: Annotated[
        str | None,
        typer.Option("--heads", help="Mask these heads: LAYER:HEAD pairs, e.g. 3:5,7:1."),
    ] = None,
    grid: Annotated[
        str | None,
        typer.Option(
            "--grid",
            help="Run the robustness experiment: top-n vs random heads for each n, e.g. 1,2,5,10,20.",
        ),
    ] = None,
    seeds: Annotated[
        int, typer.Option("--seeds", help="Random-head control seeds (with --grid).", min=1)
    ] = 3,
    mode: ModeOpt = "zero",
    target: TargetOpt = "top1",
    k: KOpt = 10,
    out: OutOpt = None,
    batch_size: BatchOpt = 32,
    overwrite: OverwriteOpt = False,
) -> None:
    """HIT@k with attention heads masked: the top-N by LPI, given heads, or a grid vs random heads."""
    if sum(x is not None for x in (top, heads, grid)) != 1:
        raise InvalidInputError("give exactly one of --top N, --heads L:H,… or --grid N,N,…")
    pairs = parse_pairs([heads], "--heads", "head") if heads is not None else None
    if pairs:
        pairs = list(dict.fromkeys(pairs))  # a head listed twice is masked once
    if heads is not None and not pairs:
        raise InvalidInputError("--heads is empty: write LAYER:HEAD pairs, e.g. 3:5,7:1")
    ns = parse_grid(grid) if grid is not None else None
    check_out(out, overwrite)
    probe_set = relations.load()
    assert probe_set is not None  # the option has a default
    handle = model.load()
    if pairs is not None:
        MaskHeads(pairs).validate(handle)  # out-of-range heads fail before any evaluation

    if ns is not None:
        ds = head_robustness(
            handle,
            probe_set,
            ns=ns,
            seeds=seeds,
            k=k,
            target=target,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            batch_size=batch_size,
            progress=True,
        )
        console.print(_robustness_table(ds))
        save(ds, out, overwrite)
        return

    if pairs is None:
        assert top is not None
        ranking = head_ranking(handle, probe_set, target=target, batch_size=batch_size)  # type: ignore[arg-type]
        pairs = list(ranking.top(top))
    means = (
        head_means(handle, list(probe_set.prompts), batch_size=batch_size)
        if mode == "mean"
        else None
    )
    mask = MaskHeads(pairs, mode=mode, means=means)
    base = evaluate(handle, probe_set, k=k, batch_size=batch_size)
    masked = evaluate(handle, probe_set, k=k, batch_size=batch_size, interventions=mask)
    label = ", ".join(f"L{la}.H{h}" for la, h in pairs)
    noun = "head" if len(pairs) == 1 else "heads"
    console.print(f"masked {len(pairs)} {noun} ({mode}): {label}", highlight=False, soft_wrap=True)
    console.print(
        compare_table(
            f"{handle.name} — {len(probe_set)} items", {"base": base, "masked": masked}, k
        )
    )
    ds = stack_conditions({"base": base, "masked": masked})
    ds.attrs.update(
        heads=",".join(f"{la}:{h}" for la, h in pairs),
        mode=mode,
        selection=f"top {top} by head-level LPI (target={target})" if top is not None else "given",
        interventions=repr(mask),
    )
    save(ds, out, overwrite)


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:+.1%}"


def _robustness_table(ds: xr.Dataset) -> Table:
    k = ds.attrs["k"]
    table = Table(
        title=f"{ds.attrs['model']} — {ds.attrs['probe']}, {ds.attrs['n_items']} items, "
        f"HIT@{k} base {float(ds['hit_base']):.3f}"
    )
    for col in (
        "n",
        f"HIT@{k} top-n",
        "drop top-n",
        f"HIT@{k} random (mean)",
        "drop random (mean ± sd)",
    ):
        table.add_column(col, justify="right")
    for n in ds["n"].values.tolist():
        row = ds.sel(n=n)
        sd = float(row["drop_random"].std())
        rnd = float(row["drop_random_mean"])
        table.add_row(
            str(n),
            f"{float(row['hit_top']):.3f}",
            _pct(float(row["drop_top"])),
            f"{float(row['hit_random'].mean()):.3f}",
            "n/a" if rnd != rnd else f"{_pct(rnd)} ± {sd:.1%}",
        )
    return table


__all__ = ["app", "mask_heads", "parse_grid"]
