"""``mechmoe route``: change routing (ban, force, top-k, zero or scale experts), compare predictions."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import typer
import xarray as xr
from rich.table import Table

from mechmoe.backends.tokenize import check_utf8
from mechmoe.cli._common import (
    BatchOpt,
    KOpt,
    OutOpt,
    OverwriteOpt,
    PromptsOpt,
    console,
    parse_pairs,
    parse_scales,
)
from mechmoe.cli._inputs import RelationsRequest, read_prompts_noting, relation_options
from mechmoe.cli._loading import ModelRequest, load_options
from mechmoe.cli._results import check_out, compare_table, save, stack_conditions
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.interventions import (
    BanExperts,
    ForceExperts,
    ScaleGates,
    SetTopK,
    ZeroExperts,
    compose,
)
from mechmoe.core.provenance import provenance
from mechmoe.ops.conformance import DEFAULT_PROMPTS
from mechmoe.ops.route_effects import route_effects
from mechmoe.probes import evaluate

app = typer.Typer()


def parse_top_k(value: str | None) -> list[SetTopK]:
    """``"4"`` → ``[SetTopK(4)]``; ``"3:4,5:2"`` → one :class:`SetTopK` per layer."""
    if value is None:
        return []
    if ":" not in value:
        try:
            return [SetTopK(int(value))]
        except ValueError:
            raise InvalidInputError(
                f"--top-k {value!r}: write K or LAYER:K pairs, e.g. 4 or 3:4,5:2"
            ) from None
    return [SetTopK(k, layers=[layer]) for layer, k in parse_pairs([value], "--top-k", "k")]


@app.command("route")
@load_options()
@relation_options(None, help="Also score these relations (HIT@k / MRR).")
def route(
    model: ModelRequest,
    relations: RelationsRequest,
    ban: Annotated[
        list[str] | None,
        typer.Option("--ban", help="Ban experts: LAYER:EXPERT pairs, e.g. 3:12,3:14."),
    ] = None,
    force: Annotated[
        list[str] | None,
        typer.Option("--force", help="Force experts into the top-k: LAYER:EXPERT pairs."),
    ] = None,
    top_k: Annotated[
        str | None,
        typer.Option("--top-k", help="Experts per token: K for every MoE layer, or LAYER:K pairs."),
    ] = None,
    zero: Annotated[
        list[str] | None,
        typer.Option("--zero", help="Silence experts (they keep their slot): LAYER:EXPERT."),
    ] = None,
    scale: Annotated[
        list[str] | None, typer.Option("--scale", help="Scale experts' gates: LAYER:EXPERT=FACTOR.")
    ] = None,
    prompts: PromptsOpt = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option("--prompt", help="A prompt (repeatable); default: a few built-in ones."),
    ] = None,
    n_top: Annotated[
        int, typer.Option("--n-top", help="Top predictions shown per prompt.", min=1)
    ] = 5,
    k: KOpt = 10,
    out: OutOpt = None,
    batch_size: BatchOpt = 32,
    overwrite: OverwriteOpt = False,
) -> None:
    """Change routing (ban, force, top-k, zero or scale experts) and compare predictions."""
    parts: list[Any] = []
    if ban:
        parts.append(BanExperts(parse_pairs(ban, "--ban")))
    if force:
        parts.append(ForceExperts(parse_pairs(force, "--force")))
    parts += parse_top_k(top_k)
    if zero:
        parts.append(ZeroExperts(parse_pairs(zero, "--zero")))
    if scale:
        parts.append(ScaleGates(parse_scales(scale, "--scale")))
    plan = compose(parts)
    if not len(plan):
        raise InvalidInputError(
            "nothing to change: give --ban, --force, --top-k, --zero or --scale"
        )
    if prompts is not None and prompt:
        raise InvalidInputError("give --prompts FILE or --prompt TEXT, not both")
    limit = relations.limit  # --limit also cuts the prompts
    if prompts is not None:
        texts = list(read_prompts_noting(prompts, template=relations.template, limit=limit).prompts)
    elif prompt:
        for i, text in enumerate(prompt, start=1):
            check_utf8(text, f"--prompt number {i}")
        texts = list(prompt)[:limit]
    else:
        texts = list(DEFAULT_PROMPTS)[:limit]
    check_out(out, overwrite)
    probe_set = relations.load()
    handle = model.load()
    plan.validate(handle)

    ds = route_effects(handle, texts, plan, n_top=n_top, batch_size=batch_size, progress=True)
    console.print(f"interventions: {plan!r}", highlight=False, soft_wrap=True)
    console.print(_predictions_table(ds))
    if probe_set is not None:
        base = evaluate(handle, probe_set, k=k, batch_size=batch_size)
        edited = evaluate(handle, probe_set, k=k, batch_size=batch_size, interventions=plan)
        console.print(
            compare_table(
                f"{handle.name} — {len(probe_set)} items", {"base": base, "routed": edited}, k
            )
        )
        items = stack_conditions({"base": base, "routed": edited})
        attrs = dict(ds.attrs)
        ds = ds.merge(items.rename({"rank": "gold_rank"}), combine_attrs="override")
        ds.attrs = attrs
        ds.attrs.update(provenance(handle, probe=probe_set, interventions=repr(plan)))
    save(ds, out, overwrite)


def _predictions_table(ds: xr.Dataset) -> Table:
    table = Table(title="next-token predictions at the last token: base → routed")
    for col, justify in (
        ("prompt", "left"),
        ("base", "left"),
        ("routed", "left"),
        ("KL", "right"),
        ("Δ logp top-1", "right"),
        ("layers rerouted", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for i, text in enumerate(ds["prompt"].values.tolist()):
        cells = []
        for cond in ("base", "routed"):
            toks = ds["top_text"].sel(condition=cond).values[i]
            lps = ds["top_logprob"].sel(condition=cond).values[i]
            cells.append(
                " ".join(f"{t!r}:{np.exp(lp):.2f}" for t, lp in zip(toks, lps, strict=True))
            )
        table.add_row(
            text if len(text) <= 40 else text[:39] + "…",
            cells[0],
            cells[1],
            f"{float(ds['kl'].values[i]):.4f}",
            f"{float(ds['delta_logprob_top1'].values[i]):+.3f}",
            f"{float(ds['routing_changed'].values[i]):.0%}",
        )
    return table


__all__ = ["app", "parse_top_k", "route"]
