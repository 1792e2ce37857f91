"""``mechmoe probe``, ``mechmoe mask-heads`` and ``mechmoe route``: recall under interventions.

Every command prints a table and, with ``--out``, writes the labeled result atomically
to a ``.nc`` file or ``.zarr`` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mechmoe.cli._common import (
    BackendOpt,
    DeviceOpt,
    DtypeOpt,
    ModelArg,
    OverwriteOpt,
    RevisionOpt,
    TokenizerOpt,
    console,
    load_model,
    run_user_errors,
)

RelationsOpt = Annotated[
    str,
    typer.Option(
        "--relations",
        "-r",
        help="Bundled relation(s), comma-separated, 'all', or an LRE .json file/folder.",
    ),
]
KOpt = Annotated[int, typer.Option("--k", "-k", help="HIT@k cut-off.", min=1)]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", help="Use only the first N items of each relation.", min=1)
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Write the labeled result to a .nc file or .zarr folder."),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.", min=1)]
TemplateOpt = Annotated[int, typer.Option("--template", "-t", help="LRE prompt template index.")]

DEFAULT_RELATION = "country_capital_city"


# ---- parsing ---------------------------------------------------------------------------


def parse_pairs(
    values: list[str] | None, option: str, what: str = "expert"
) -> list[tuple[int, int]]:
    """``["3:12,3:14", "5:1"]`` → ``[(3, 12), (3, 14), (5, 1)]``; errors name the option."""
    from mechmoe.core.errors import InvalidInputError

    out: list[tuple[int, int]] = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            left, sep, right = part.partition(":")
            try:
                if not sep:
                    raise ValueError
                out.append((int(left), int(right)))
            except ValueError:
                raise InvalidInputError(
                    f"{option} {part!r}: write LAYER:{what.upper()} pairs, e.g. 3:12,5:1"
                ) from None
    return out


def parse_scales(values: list[str] | None, option: str) -> dict[int, dict[int, float]]:
    """``["3:12=0.5"]`` → ``{3: {12: 0.5}}``."""
    from mechmoe.core.errors import InvalidInputError

    out: dict[int, dict[int, float]] = {}
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            pair, eq, factor = part.partition("=")
            try:
                if not eq:
                    raise ValueError
                ((layer, expert),) = parse_pairs([pair], option)
                out.setdefault(layer, {})[expert] = float(factor)
            except (ValueError, InvalidInputError):
                raise InvalidInputError(
                    f"{option} {part!r}: write LAYER:EXPERT=FACTOR, e.g. 3:12=0.5"
                ) from None
    return out


def parse_top_k(value: str | None) -> list[Any]:
    """``"4"`` → ``[SetTopK(4)]``; ``"3:4,5:2"`` → one :class:`SetTopK` per layer."""
    from mechmoe.core.errors import InvalidInputError
    from mechmoe.core.interventions import SetTopK

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


def _load_probe(relations: str, template: int, limit: int | None) -> Any:
    from mechmoe.cli.probes import load_probe_noting

    probe = load_probe_noting(relations, template=template)
    return probe.head(limit, per_relation=True) if limit is not None else probe


def _check_out(out: Path | None, overwrite: bool = False) -> None:
    if out is not None:
        from mechmoe.ops.results import check_output_path

        check_output_path(out, overwrite=overwrite)


def _save(ds: Any, out: Path | None, overwrite: bool = False) -> None:
    if out is None:
        return
    from mechmoe.ops.results import save_result

    path = save_result(ds, out, overwrite=overwrite)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)


# ---- tables ----------------------------------------------------------------------------


def _compare_table(title: str, conditions: dict[str, Any], k: int) -> Any:
    """Per-relation HIT@k / MRR of each condition, with the relative drop vs the first."""
    from rich.table import Table

    from mechmoe.probes import summarize

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


def _stack(conditions: dict[str, Any]) -> Any:
    """Item datasets of several conditions along a ``condition`` dim."""
    import xarray as xr

    names = list(conditions)
    ds = xr.concat(
        [conditions[n] for n in names], dim="condition", coords="minimal", compat="override"
    )
    ds = ds.assign_coords(condition=names)
    ds.attrs = dict(next(iter(conditions.values())).attrs)
    return ds


# ---- probe -------------------------------------------------------------------------------


@run_user_errors
def probe(
    model: ModelArg,
    relations: RelationsOpt = DEFAULT_RELATION,
    k: KOpt = 10,
    limit: LimitOpt = None,
    out: OutOpt = None,
    batch_size: BatchOpt = 32,
    template: TemplateOpt = 0,
    revision: RevisionOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    tokenizer: TokenizerOpt = None,
    backend: BackendOpt = "nnsight",
    overwrite: OverwriteOpt = False,
) -> None:
    """Relational recall: HIT@k and MRR of each relation's gold objects."""
    from mechmoe.probes import evaluate

    _check_out(out, overwrite)
    probe_set = _load_probe(relations, template, limit)
    handle = load_model(
        model, revision=revision, device=device, dtype=dtype, tokenizer=tokenizer, backend=backend
    )
    ds = evaluate(handle, probe_set, k=k, batch_size=batch_size)
    console.print(_compare_table(f"{handle.name} — {len(probe_set)} items", {"": ds}, k))
    _save(ds, out, overwrite)


# ---- mask-heads --------------------------------------------------------------------------


@run_user_errors
def mask_heads(
    model: ModelArg,
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
    mode: Annotated[
        str, typer.Option("--mode", help="zero, or mean (each head's mean over the probe).")
    ] = "zero",
    target: Annotated[
        str, typer.Option("--target", help="LPI target of the ranking: top1 or gold.")
    ] = "top1",
    relations: RelationsOpt = DEFAULT_RELATION,
    k: KOpt = 10,
    limit: LimitOpt = None,
    out: OutOpt = None,
    batch_size: BatchOpt = 32,
    template: TemplateOpt = 0,
    revision: RevisionOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    tokenizer: TokenizerOpt = None,
    backend: BackendOpt = "nnsight",
    overwrite: OverwriteOpt = False,
) -> None:
    """HIT@k with attention heads masked: the top-N by LPI, given heads, or a grid vs random heads."""
    from mechmoe.core.errors import InvalidInputError
    from mechmoe.core.interventions import MaskHeads

    if sum(x is not None for x in (top, heads, grid)) != 1:
        raise InvalidInputError("give exactly one of --top N, --heads L:H,… or --grid N,N,…")
    if mode not in ("zero", "mean"):
        raise InvalidInputError(f"--mode {mode!r}: use zero or mean")
    if target not in ("top1", "gold"):
        raise InvalidInputError(f"--target {target!r}: use top1 or gold")
    pairs = parse_pairs([heads], "--heads", "head") if heads is not None else None
    if pairs:
        pairs = list(dict.fromkeys(pairs))  # a head listed twice is masked once
    if heads is not None and not pairs:
        raise InvalidInputError("--heads is empty: write LAYER:HEAD pairs, e.g. 3:5,7:1")
    ns = None
    if grid is not None:
        try:
            ns = [int(x) for x in grid.split(",") if x.strip()]
        except ValueError:
            raise InvalidInputError(
                f"--grid {grid!r}: write head counts, e.g. 1,2,5,10,20"
            ) from None
        if not ns:
            raise InvalidInputError("--grid is empty: write head counts, e.g. 1,2,5,10,20")
    _check_out(out, overwrite)
    probe_set = _load_probe(relations, template, limit)
    handle = load_model(
        model, revision=revision, device=device, dtype=dtype, tokenizer=tokenizer, backend=backend
    )
    if pairs is not None:
        MaskHeads(pairs).validate(handle)  # out-of-range heads fail before any evaluation

    if ns is not None:
        from mechmoe.ops.robustness import head_robustness

        ds = head_robustness(
            handle,
            probe_set,
            ns=ns,
            seeds=seeds,
            k=k,
            target=target,  # type: ignore[arg-type]
            mode=mode,
            batch_size=batch_size,
            progress=True,  # type: ignore[arg-type]
        )
        console.print(_robustness_table(ds))
        _save(ds, out, overwrite)
        return

    from mechmoe.probes import evaluate

    if pairs is None:
        assert top is not None
        from mechmoe.ops.robustness import _ranking

        total = handle.dims.n_layers * handle.dims.n_heads
        order, _, _ = _ranking(
            handle, probe_set, None, target=target, batch_size=batch_size, base=None
        )
        pairs = list(order[: min(top, total)])
    MaskHeads(pairs).validate(handle)  # bad heads fail before any forward pass
    means = None
    if mode == "mean":
        from mechmoe.ops.interventions import head_means

        means = head_means(handle, list(probe_set.prompts), batch_size=batch_size)
    mask = MaskHeads(pairs, mode=mode, means=means)  # type: ignore[arg-type]
    base = evaluate(handle, probe_set, k=k, batch_size=batch_size)
    masked = evaluate(handle, probe_set, k=k, batch_size=batch_size, interventions=mask)
    label = ", ".join(f"L{la}.H{h}" for la, h in pairs)
    noun = "head" if len(pairs) == 1 else "heads"
    console.print(f"masked {len(pairs)} {noun} ({mode}): {label}", highlight=False, soft_wrap=True)
    console.print(
        _compare_table(
            f"{handle.name} — {len(probe_set)} items", {"base": base, "masked": masked}, k
        )
    )
    ds = _stack({"base": base, "masked": masked})
    ds.attrs.update(
        heads=",".join(f"{la}:{h}" for la, h in pairs),
        mode=mode,
        selection=f"top {top} by head-level LPI (target={target})" if top is not None else "given",
        interventions=repr(mask),
    )
    _save(ds, out, overwrite)


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:+.1%}"


def _robustness_table(ds: Any) -> Any:
    from rich.table import Table

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


# ---- route --------------------------------------------------------------------------------


@run_user_errors
def route(
    model: ModelArg,
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
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="Prompt file: one prompt a line, or an LRE .json."),
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option("--prompt", help="A prompt (repeatable); default: a few built-in ones."),
    ] = None,
    relations: Annotated[
        str | None,
        typer.Option("--relations", "-r", help="Also score these relations (HIT@k / MRR)."),
    ] = None,
    n_top: Annotated[
        int, typer.Option("--n-top", help="Top predictions shown per prompt.", min=1)
    ] = 5,
    k: KOpt = 10,
    limit: LimitOpt = None,
    out: OutOpt = None,
    batch_size: BatchOpt = 32,
    template: TemplateOpt = 0,
    revision: RevisionOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    tokenizer: TokenizerOpt = None,
    backend: BackendOpt = "nnsight",
    overwrite: OverwriteOpt = False,
) -> None:
    """Change routing (ban, force, top-k, zero or scale experts) and compare predictions."""
    from mechmoe.core.errors import InvalidInputError
    from mechmoe.core.interventions import (
        BanExperts,
        ForceExperts,
        ScaleGates,
        ZeroExperts,
        compose,
    )

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
    if prompts is not None:
        from mechmoe.cli.attribute import read_prompts

        texts, _ = read_prompts(prompts, template=template)
    elif prompt:
        from mechmoe.backends.tokenize import check_utf8

        for i, text in enumerate(prompt, start=1):
            check_utf8(text, f"--prompt number {i}")
        texts = list(prompt)
    else:
        from mechmoe.ops.conformance import DEFAULT_PROMPTS

        texts = list(DEFAULT_PROMPTS)
    if limit is not None:
        texts = texts[:limit]
    _check_out(out, overwrite)
    probe_set = _load_probe(relations, template, limit) if relations else None
    handle = load_model(
        model, revision=revision, device=device, dtype=dtype, tokenizer=tokenizer, backend=backend
    )
    plan.validate(handle)

    ds = _route_predictions(handle, texts, plan, n_top=n_top, batch_size=batch_size)
    console.print(f"interventions: {plan!r}", highlight=False, soft_wrap=True)
    console.print(_predictions_table(ds))
    if probe_set is not None:
        from mechmoe.probes import evaluate

        base = evaluate(handle, probe_set, k=k, batch_size=batch_size)
        edited = evaluate(handle, probe_set, k=k, batch_size=batch_size, interventions=plan)
        console.print(
            _compare_table(
                f"{handle.name} — {len(probe_set)} items", {"base": base, "routed": edited}, k
            )
        )
        items = _stack({"base": base, "routed": edited})
        ds = ds.merge(items.rename({"rank": "gold_rank"}), combine_attrs="override")
    from mechmoe.core.provenance import provenance

    ds.attrs.update(
        provenance(
            handle, probe=probe_set if probe_set is not None else texts, interventions=repr(plan)
        )
    )
    _save(ds, out, overwrite)


def _route_predictions(
    handle: Any, texts: list[str], plan: Any, *, n_top: int, batch_size: int
) -> Any:
    """Top predictions at the last token with and without ``plan``, plus per-prompt KL."""
    import numpy as np
    import torch
    import xarray as xr

    from mechmoe._types import PROMPT

    logp = {"base": [], "routed": []}  # type: dict[str, list[Any]]
    changed = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        base = handle.capture(chunk)
        edited = handle.capture(chunk, interventions=plan)
        logp["base"].append(torch.log_softmax(base.logits[:, -1].float(), -1))
        logp["routed"].append(torch.log_softmax(edited.logits[:, -1].float(), -1))
        # fraction of MoE layers whose expert set at the last token changed
        moe = [la for la, lc in enumerate(base.layers) if lc.kind == "moe"]
        diff = torch.zeros(len(chunk))
        for la in moe:
            a = base.layers[la].expert_idx[:, -1].sort(-1).values
            b = edited.layers[la].expert_idx[:, -1].sort(-1).values
            diff += 1.0 if a.shape != b.shape else (a != b).any(-1).float()
        changed.append(diff / max(len(moe), 1))
    lp = {name: torch.cat(v) for name, v in logp.items()}
    from mechmoe.probes.metrics import degenerate_rows, warn_degenerate

    # every logit equal (or inf/NaN): the routed predictions below mean nothing
    warn_degenerate(int(degenerate_rows(lp["routed"]).sum()), len(texts))
    n = min(n_top, lp["base"].shape[-1])
    tok_ids, tok_lp, tok_text = [], [], []
    for name in ("base", "routed"):
        vals, ids = lp[name].topk(n, dim=-1)
        tok_ids.append(ids.numpy())
        tok_lp.append(vals.numpy())
        tok_text.append(
            np.array(
                [[handle.tokenizer.decode([int(i)]) for i in row] for row in ids], dtype=object
            )
        )
    p_base = lp["base"].exp()
    kl = (p_base * (lp["base"] - lp["routed"])).sum(-1).clamp_min(0)
    top1 = lp["base"].argmax(-1)
    d_top1 = (
        lp["routed"].gather(-1, top1[:, None])[:, 0] - lp["base"].gather(-1, top1[:, None])[:, 0]
    )
    return xr.Dataset(
        {
            "top_token": (("condition", PROMPT, "top"), np.stack(tok_ids)),
            "top_logprob": (("condition", PROMPT, "top"), np.stack(tok_lp)),
            "top_text": (("condition", PROMPT, "top"), np.stack(tok_text)),
            "kl": ((PROMPT,), kl.numpy()),
            "top1_kept": ((PROMPT,), (lp["routed"].argmax(-1) == top1).numpy()),
            "delta_logprob_top1": ((PROMPT,), d_top1.numpy()),
            "routing_changed": ((PROMPT,), torch.cat(changed).numpy()),
        },
        coords={
            "condition": ["base", "routed"],
            PROMPT: np.array(texts, dtype=object),
            "top": np.arange(1, n + 1),
        },
        attrs={"kl": "KL(base || routed) of the next-token distribution at the last token"},
    )


def _predictions_table(ds: Any) -> Any:
    import numpy as np
    from rich.table import Table

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


__all__ = ["mask_heads", "parse_pairs", "parse_scales", "parse_top_k", "probe", "route"]
