"""Gated-LPI attribution at every level: neuron, expert, head, attention and FFN layer.

``level="layer"`` scores both sub-layers of every layer (attention and FFN) from one pass,
side by side along a ``sublayer`` dim.

The definitions are those of ``method.md`` (see docs/attribution.md): for a vector ``v``
added to a base residual, ``LPI(v | base) = log softmax(z(base + v))[w] −
log softmax(z(base))[w]`` with ``z`` the unembedding of the *frozen* final norm. Every
score is computed at the last token of each prompt.

Neurons use the fast exact path: a neuron's direction through the frozen norms does
not depend on the prompt, only its coefficient does, so its unembedding projection is
formed once per (layer, expert) and shared by every prompt that chose that expert.

Examples
--------
>>> from mechmoe.testing import tiny_model
>>> from mechmoe.ops.attribution import attribute
>>> ds = attribute(tiny_model("olmoe"), ["The capital of France is"], level="expert")
>>> ds["score"].dims
('layer', 'expert')
>>> int(ds["n_chosen"].sum())  # one prompt, 2 layers, top-2
4
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mechmoe._types import (
    EXPERT,
    HEAD,
    LAYER,
    NEURON,
    PROMPT,
    SUBLAYER,
    Level,
    Precision,
    Target,
)
from mechmoe.core.checks import check_choice, check_number, choice_values, entry_point
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.progress import task
from mechmoe.core.provenance import provenance, weights_hash_soon
from mechmoe.ops import _native
from mechmoe.ops._lpi_scoring import COMPAT_EPS as COMPAT_EPS
from mechmoe.ops._lpi_scoring import MAX_GROUP as MAX_GROUP
from mechmoe.ops._lpi_scoring import _group_size, _merge, _Readout, _Scorer, _squeeze

if TYPE_CHECKING:
    import xarray as xr

    from mechmoe.core.edits import Edit
    from mechmoe.model import Model

#: Levels whose scores ``precision="bounded"`` may truncate; other levels always run exact
#: and record ``precision="exact"``.
BOUNDED_LEVELS: tuple[str, ...] = ("neuron",)

#: Every level (:data:`mechmoe._types.Level`).
LEVELS: tuple[str, ...] = choice_values(Level)
#: The sub-layers ``level="layer"`` scores, in order along the ``sublayer`` dim.
SUBLAYERS: tuple[str, ...] = ("attn", "ffn")
#: Dim of a shared expert's neurons (Qwen2-MoE), kept apart from the routed experts'.
SHARED_NEURON = "shared_neuron"


# ---- validation ------------------------------------------------------------------------
def _check_options(
    model: Model,
    prompts: Sequence[str],
    level: str,
    target: str,
    targets: Sequence[int | Sequence[int]] | None,
    precision: str,
    tolerance: float,
    memory_budget: int,
    batch_size: int,
) -> list[str]:
    if memory_budget < 2**20:
        raise InvalidInputError(f"memory_budget={memory_budget} bytes is below 1 MiB")
    if level == "expert" and not model.dims.is_moe:
        raise InvalidInputError(
            f"level='expert' needs a MoE model, but {model.name} is dense (no layer has experts); "
            "use level='ffn' or 'neuron'"
        )
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InvalidInputError("no prompts given")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InvalidInputError(f"prompt {i} is a {type(prompt).__name__}, not a string")
        if not prompt.strip():
            raise InvalidInputError(f"prompt {i} is empty; every prompt needs at least one token")
    max_pos = model.dims.max_positions
    if max_pos is not None:
        for i, prompt in enumerate(prompts):
            n_tok = len(model.tokenizer(prompt, add_special_tokens=True)["input_ids"])
            if n_tok > max_pos:
                raise InvalidInputError(
                    f"prompt {i} ({prompt[:40]!r}…) has {n_tok} tokens, more than the model's "
                    f"context of {max_pos}; shorten it"
                )
    if target == "gold":
        if targets is None:
            raise InvalidInputError("target='gold' needs targets= (one token id per prompt)")
        if len(targets) != len(prompts):
            raise InvalidInputError(
                f"got {len(targets)} targets for {len(prompts)} prompts; give one per prompt"
            )
        vocab = model.dims.vocab
        for i, t in enumerate(targets):
            ids = [t] if isinstance(t, (int, np.integer)) else t
            if not isinstance(ids, (list, tuple)) or not ids:
                raise InvalidInputError(
                    f"target {i} ({t!r}, for prompt {prompts[i][:40]!r}) must be a token id or "
                    "a non-empty tuple of ids (one per gold object)"
                )
            for x in ids:
                if (
                    isinstance(x, bool)
                    or not isinstance(x, (int, np.integer))
                    or not 0 <= int(x) < vocab
                ):
                    raise InvalidInputError(
                        f"target {i} ({t!r}, for prompt {prompts[i][:40]!r}) is not a token id "
                        f"in [0, {vocab})"
                    )
    elif targets is not None:
        raise InvalidInputError("targets= is only used with target='gold'")
    return prompts


# ---- gold targets ---------------------------------------------------------------------------
#: With target="gold", a prompt may list several gold token ids (an item with several gold
#: objects); its target is the one the model ranks highest.
GOLD_RULE = (
    "of several gold ids, the one with the highest logit at the last token (the first "
    "listed on ties)"
)


def _gold_table(targets: Sequence[Any], device: Any) -> Tensor:
    """``(prompt, m)`` ids: each prompt's gold ids, padded by repeating its first id."""
    rows = [[int(t)] if isinstance(t, (int, np.integer)) else [int(x) for x in t] for t in targets]
    m = max(len(r) for r in rows)
    return torch.as_tensor(
        [r + [r[0]] * (m - len(r)) for r in rows], dtype=torch.long, device=device
    )


def _pick_gold(logits: Tensor, ids: Tensor) -> Tensor:
    """Per row, the id among ``ids[row]`` with the highest logit (first on ties)."""
    best = logits.gather(1, ids).argmax(1)  # argmax returns the first maximal index
    return ids.gather(1, best[:, None])[:, 0]


# ---- the public function ------------------------------------------------------------------
@entry_point
def attribute(
    model: Model,
    prompts: Sequence[str],
    *,
    level: Level,
    target: Target = "top1",
    targets: Sequence[int | Sequence[int]] | None = None,
    precision: Precision = "exact",
    tolerance: float = 1e-4,
    memory_budget: int = 4 * 2**30,
    reference_compat: bool = False,
    per_prompt: bool = False,
    batch_size: int = 16,
    interventions: Edit | Sequence[Edit] | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Gated-LPI scores of one level for a set of prompts, at each prompt's last token.

    Parameters
    ----------
    model
        A :class:`mechmoe.Model`.
    prompts
        The prompts; each is scored at its last token.
    level
        ``"neuron"`` (layer × expert × neuron; a dense layer is one expert),
        ``"expert"`` (layer × expert; MoE models only), ``"head"`` (layer × head),
        ``"attn"`` / ``"ffn"`` (one score per layer for the attention / FFN sub-layer),
        or ``"layer"``: both, from the same pass, along a leading ``sublayer`` dim
        (``"attn"``, ``"ffn"``).
    target, targets
        ``"top1"``: the model's own top prediction; ``"gold"``: ``targets[i]`` is the
        token id for prompt ``i`` (see :func:`mechmoe.probes.first_token_ids`), or a
        tuple of ids when the prompt has several gold objects
        (:func:`mechmoe.probes.gold_token_ids`): then the target is the one whose
        logit is highest at the last token (the first listed on ties), so the scores
        explain the gold answer the model ranks best (the one HIT@k and MRR count).
    precision, tolerance
        ``"exact"`` sums the softmax over the whole vocabulary. ``"certified"``
        (``"bounded"`` is its old name; neuron level) takes it from four moments of the
        neuron's logit change with a proven bound of at most ``tolerance`` per score
        (``1e-4``; ``1e-6`` is below the fp32 rounding of the exact sum), summing
        exactly the pairs it cannot certify: ``score_bound`` bounds each item's error,
        ``prompt_bound`` each prompt's, ``attrs["bound"]`` is the largest and
        ``attrs["n_fallback"]`` counts the pairs summed exactly (``attrs["n_moments"]``
        those the tail bound left to the moment tier). Other levels are always
        exact and record ``attrs["precision"] = "exact"`` (``precision_requested`` keeps
        what was asked).
    memory_budget
        Bytes the engine's temporaries may take (the model and captures not counted).
    reference_compat
        Use the published code's final norm: RMS form with eps 1e-6 for every family,
        no β and no unembedding bias.
    per_prompt
        Also return ``score_per_prompt`` with a leading ``prompt`` dim; items a prompt
        did not score (experts it did not choose) are NaN there, distinct from 0.
    batch_size
        Prompts per forward pass. Up to 256 prompts are scored together, so each
        neuron projection is formed once per 256 prompts.
    interventions
        Edits passed to :meth:`Model.capture`; scores then describe the edited model.
    progress
        Report progress (:mod:`mechmoe.core.progress`): to the installed reporter (the
        CLI's), or on stderr when none is installed.

    Returns
    -------
    xarray.Dataset
        ``score``: mean over prompts, with unchosen experts counting as 0 and NaN for
        items the model does not have (a layer narrower than the widest one).
        ``n_chosen`` (expert and neuron levels): prompts that chose each expert.
        ``shared_score`` (Qwen2-MoE shared experts, expert and neuron levels).
        ``gated_act`` (neuron level): mean of ``g · m_k`` over prompts (unchosen = 0);
        its sign says which way the neuron's value vector was added.
        ``target`` / ``target_logprob``: the target token and its log-probability per
        prompt. Attributes record the model, options, the achieved bound and the norm
        treatment.
    """
    # Options are checked here, before an annotated internal sees them (core/checks.py).
    check_choice(level, Level, name="level")
    check_choice(target, Target, name="target")
    check_choice(precision, Precision, name="precision")
    tolerance = float(check_number(tolerance, name="tolerance", positive=True))
    memory_budget = int(check_number(memory_budget, name="memory_budget"))
    batch_size = int(check_number(batch_size, name="batch_size", integer=True, minimum=1))
    prompts = _check_options(
        model, prompts, level, target, targets, precision, tolerance, memory_budget, batch_size
    )
    n = len(prompts)
    # The provenance hash of the weights, on a thread while the scoring runs.
    weights = weights_hash_soon(model)
    readout = _Readout.of(model, reference_compat=reference_compat)
    levels = SUBLAYERS if level == "layer" else (level,)
    scorers = {
        lv: _Scorer(
            model,
            lv,
            n,
            readout,
            precision=precision,
            tolerance=tolerance,
            budget=int(memory_budget),
            per_prompt=per_prompt,
        )
        for lv in levels
    }
    dev = model.device
    gold = None if targets is None else _gold_table(targets, dev)
    target_ids = np.zeros(n, dtype=np.int64)
    target_lp = np.zeros(n, dtype=np.float32)
    group_size = _group_size(n, batch_size, model.dims.vocab, int(memory_budget))
    n_batches = sum(-(-min(group_size, n - g0) // batch_size) for g0 in range(0, n, group_size))
    L = model.dims.n_layers
    n_groups = -(-n // group_size)
    with (
        torch.no_grad(),
        task(f"attribute {level}", total=n_batches + n_groups * L, show=progress) as bar,
    ):
        for g0 in range(0, n, group_size):
            g1 = min(n, g0 + group_size)
            parts: dict[str, list[Any]] = {lv: [] for lv in levels}
            for b0 in range(g0, g1, batch_size):
                cap = model.capture(
                    prompts[b0 : min(g1, b0 + batch_size)], interventions=interventions
                )
                for lv in levels:  # one pass serves every sub-layer of level="layer"
                    parts[lv].append(_squeeze(cap, lv))
                bar.advance()
            groups = {lv: _merge(parts[lv], np.arange(g0, g1)) for lv in levels}
            group = groups[levels[0]]
            w = group.logits.argmax(-1) if gold is None else _pick_gold(group.logits, gold[g0:g1])
            target_ids[g0:g1] = w.cpu().numpy()
            target_lp[g0:g1] = (
                torch.log_softmax(group.logits, -1).gather(1, w[:, None])[:, 0].cpu().numpy()
            )
            sigma = readout.sigma(group.final_resid)
            for li in range(L):
                for lv in levels:
                    scorers[lv].score_layer(groups[lv], li, w, sigma)
                bar.advance()
    digest = True if weights is None else weights.result()
    results = [
        _to_dataset(
            model,
            prompts,
            scorers[lv],
            readout,
            level=lv,
            recorded_level=level,
            target=target,
            target_ids=target_ids,
            target_lp=target_lp,
            precision=precision,
            tolerance=tolerance,
            reference_compat=reference_compat,
            batch_size=batch_size,
            weights=digest,
            interventions=interventions,
        )
        for lv in levels
    ]
    return results[0] if level != "layer" else _stack_sublayers(results)


def _stack_sublayers(results: list[xr.Dataset]) -> xr.Dataset:
    """The sub-layers' results as one: scores along a leading ``sublayer`` dim.

    Everything else (targets, their log-probabilities, provenance) is the same in each.
    """
    import xarray as xr

    out = results[0].copy()
    for name in ("score", "score_per_prompt"):
        if name in out:
            out[name] = xr.concat([r[name] for r in results], dim=SUBLAYER)
    out = out.assign_coords({SUBLAYER: np.array(SUBLAYERS, dtype=object)})
    out.attrs["level"] = "layer"
    return out


def _to_dataset(
    model: Model,
    prompts: list[str],
    scorer: _Scorer,
    readout: _Readout,
    *,
    level: str,
    recorded_level: str,
    target: str,
    target_ids: np.ndarray,
    target_lp: np.ndarray,
    precision: str,
    tolerance: float,
    reference_compat: bool,
    batch_size: int,
    interventions: Any,
    weights: bool | str = True,
) -> xr.Dataset:
    import xarray as xr

    from mechmoe.core.interventions import as_edits

    d = model.dims
    dims = {
        "neuron": (LAYER, EXPERT, NEURON),
        "expert": (LAYER, EXPERT),
        "head": (LAYER, HEAD),
        "attn": (LAYER,),
        "ffn": (LAYER,),
    }[level]
    n = len(prompts)
    mean = np.where(scorer.exists, scorer.total / n, np.nan)
    data: dict[str, Any] = {"score": (dims, mean)}
    if scorer.rows is not None:
        data["score_per_prompt"] = ((PROMPT, *dims), scorer.rows)
    if scorer.bound_total is not None and scorer.precision != "exact":
        # The mean of per-prompt scores is within the mean of their bounds.
        data["score_bound"] = (dims, np.where(scorer.exists, scorer.bound_total / n, np.nan))
        data["prompt_bound"] = ((PROMPT,), scorer.prompt_bound)
        if scorer.I_sh:
            data["shared_score_bound"] = (
                (LAYER, SHARED_NEURON),
                np.where(scorer.sh_exists, scorer.sh_bound_total / n, np.nan),
            )
    if level in ("neuron", "expert"):
        n_chosen = scorer.n_chosen
        data["n_chosen"] = ((LAYER, EXPERT), n_chosen)
        if scorer.I_sh:
            sh_dims = (LAYER, SHARED_NEURON) if level == "neuron" else (LAYER,)
            data["shared_score"] = (
                sh_dims,
                np.where(scorer.sh_exists, scorer.sh_total / n, np.nan),
            )
            if scorer.sh_rows is not None:
                data["shared_score_per_prompt"] = ((PROMPT, *sh_dims), scorer.sh_rows)
    if scorer.coef is not None:
        data["gated_act"] = (dims, np.where(scorer.exists, scorer.coef / n, np.nan))
        if scorer.I_sh:
            data["shared_gated_act"] = (
                (LAYER, SHARED_NEURON),
                np.where(scorer.sh_exists, scorer.sh_coef / n, np.nan),
            )
    data["target"] = ((PROMPT,), target_ids)
    data["target_logprob"] = ((PROMPT,), target_lp)
    coords: dict[str, Any] = {
        PROMPT: np.array(prompts, dtype=object),
        LAYER: np.arange(d.n_layers),
        "layer_kind": ((LAYER,), np.array(d.layer_kinds, dtype=object)),
        # hybrids: "recurrent" layers (Mamba, linear attention) have no heads (NaN scores)
        "mixer_kind": (
            (LAYER,),
            np.array(
                [("attention" if d.has_heads(i) else "recurrent") for i in range(d.n_layers)],
                dtype=object,
            ),
        ),
    }
    if level in ("neuron", "expert"):
        coords[EXPERT] = np.arange(scorer.E)
    if level == "neuron":
        coords[NEURON] = np.arange(scorer.I)
        if scorer.I_sh:
            coords[SHARED_NEURON] = np.arange(scorer.I_sh)
    if level == "head":
        coords[HEAD] = np.arange(d.n_heads)
    edits = as_edits(interventions)
    # Only levels whose kernel truncates the softmax can be bounded; the rest ran exact.
    done = precision if level in BOUNDED_LEVELS else "exact"
    attrs = provenance(
        model,
        probe=prompts,
        weights=weights,
        options={
            "level": recorded_level,
            "target_mode": target,
            "precision": done,
            "tolerance": float(tolerance),
            "reference_compat": bool(reference_compat),
            "batch_size": batch_size,
            "interventions": repr(edits) if edits else "",
        },
        method="Gated-LPI" if level == "neuron" else "LPI",
        position="last",
        bound=float(scorer.bound) if done != "exact" else 0.0,
        **scorer.stats.attrs(),
        kernel=(
            "native"
            if level == "neuron" and readout.W_U.device.type == "cpu" and _native.library()
            else "torch"
        ),
        precision_requested=precision,
        gold_rule=GOLD_RULE if target == "gold" else "",
        norm_treatment=readout.norm_treatment(model, reference_compat=reference_compat),
        aggregation="mean over prompts; experts a prompt did not choose count as 0",
        shared_expert="separate variable shared_score (own sigmoid gate)" if scorer.I_sh else "",
        n_prompts=n,
    )
    return xr.Dataset(data, coords=coords, attrs=attrs)


__all__ = ["LEVELS", "SHARED_NEURON", "SUBLAYERS", "attribute"]
