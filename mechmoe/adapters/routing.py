"""One routing module for every family: the router description, applied.

:func:`routing_rule` turns an adapter spec's :class:`~mechmoe.adapters.spec.RouterSpec`
and a model config into a :class:`RoutingRule` of plain values; :func:`route` applies a
rule to router logits and returns the chosen experts and their weights, exactly as the
family's router computes them (same operations in the same order and dtype, so with no
request the result equals the family's own forward bit for bit), or as a routing request
changes them:

- ``banned`` experts are taken out before anything is chosen: their logit becomes −∞
  (so a softmax over all experts no longer counts them) and their selection score −∞
  (so neither a selection bias nor a sigmoid score can bring them back); group scores
  are then formed without them.
- ``forced`` experts win a slot whatever their score (their groups are kept); their
  weights are their own scores, renormalised only where the family renormalises.
- ``k`` sets how many experts each token gets.
- ``scales`` multiplies the final weight of an expert wherever it is chosen.

Routing interventions never route by themselves: a plan merges its routing values into
one :class:`~mechmoe.core.interventions.RoutingRequest` per layer and the model
(``Model.reroute``) hands it to :func:`reroute`, which calls :func:`route` with the
layer's rule, selection bias and per-expert scale. Every routing decision is taken here.

:func:`selection_scores` gives the scores the top-k ran on (score + selection bias, or
the logits), which the capture records beside the logits and the weights.

Examples
--------
>>> import torch
>>> from mechmoe.adapters.spec import RouterSpec
>>> rule = routing_rule(RouterSpec(renormalize=True), config=None)
>>> logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
>>> weights, index = route(logits, rule, k=2)
>>> index.tolist(), round(float(weights.sum()), 6)
([[0, 1]], 1.0)
>>> route(logits, rule, k=2, banned={0})[1].tolist()
[[1, 2]]
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechmoe.adapters.spec import AdapterSpec, RouterSpec, config_value
from mechmoe.core.errors import InvalidInputError, SpecMismatchError
from mechmoe.core.interventions import RoutingRequest, check_request
from mechmoe.core.types import RouterOutput


@dataclass(frozen=True)
class RoutingRule:
    """A router description with every config value read: what :func:`route` applies.

    Fields mirror :class:`~mechmoe.adapters.spec.RouterSpec`; ``n_group`` is ``None``
    without group-limited selection, ``scale`` is ``None`` without a routing factor,
    ``weights_dtype`` is ``None`` where the weights keep the scores' dtype, and ``band``
    is SparseMixer's threshold (twice the config's jitter).
    """

    score: Literal["softmax", "sigmoid"] = "softmax"
    select: Literal["score", "logits", "sparsemixer"] = "score"
    renormalize: bool = False
    renorm_eps: float = 0.0
    renorm_min: float | None = None
    scale: float | None = None
    n_group: int | None = None
    topk_group: int | None = None
    group_score: Literal["max", "top2_sum"] = "top2_sum"
    apply_to: Literal["output", "input"] = "output"
    float32: bool = True
    weights_dtype: torch.dtype | None = None
    sorted: bool = True
    band: float | None = None

    def describe(self) -> str:
        """One line naming the rule, for provenance and ``mechmoe adapters list``."""
        if self.select == "sparsemixer":
            head = f"SparseMixer (band {self.band:g})"
        elif self.select == "logits":
            head = f"top-k of the logits, then {self.score} over the k"
        else:
            head = f"{self.score} over all experts, top-k"
        parts = [head]
        if self.n_group:
            parts.append(
                f"in the best {self.topk_group} of {self.n_group} groups ({self.group_score})"
            )
        if self.renormalize:
            parts.append(
                "renormalised"
                if self.renorm_min is None
                else f"renormalised (sum clamped at ≥ {self.renorm_min:g})"
            )
        if self.scale is not None:
            parts.append(f"× {self.scale:g}")
        if self.apply_to == "input":
            parts.append("weight applied to the expert input")
        return ", ".join(parts)


def routing_rule(
    spec: AdapterSpec | RouterSpec,
    config: Any,
    *,
    model_dtype: torch.dtype = torch.float32,
) -> RoutingRule:
    """The :class:`RoutingRule` of an adapter spec's router (or of a router description)
    for a model with this ``config`` and dtype.

    A spec without an MoE block gets the default rule, which no layer uses.
    """
    if isinstance(spec, AdapterSpec):
        if spec.moe is None:
            return RoutingRule(weights_dtype=model_dtype)
        spec = spec.moe.routing

    def number(keys: Any, what: str) -> float:
        return float(config_value(config, keys, what=what))

    renorm: bool
    if isinstance(spec.renormalize, bool):
        renorm = spec.renormalize
    else:
        try:
            renorm = bool(config_value(config, spec.renormalize, what="renormalisation flag"))
        except SpecMismatchError:  # a family whose config has no such flag does not renormalise
            renorm = False
    n_group = topk_group = None
    groups = spec.groups
    if groups is not None and groups.method is not None:
        method = config_value(config, groups.method, what="expert selection method")
        if method not in groups.method_is:
            groups = None
    if groups is not None:
        n_group = int(config_value(config, groups.n_group, what="expert group count"))
        topk_group = int(config_value(config, groups.topk_group, what="groups kept"))
    return RoutingRule(
        score=spec.score,
        select=spec.select,
        renormalize=renorm,
        renorm_eps=float(spec.renorm_eps),
        renorm_min=None if spec.renorm_min is None else number(spec.renorm_min, "renorm minimum"),
        scale=None if spec.scale is None else number(spec.scale, "routing scale"),
        n_group=n_group,
        topk_group=topk_group,
        group_score=groups.score if groups is not None else "top2_sum",
        apply_to=spec.apply_to,
        float32=spec.float32,
        weights_dtype=torch.float32 if spec.weights_dtype == "float32" else model_dtype,
        sorted=spec.sorted,
        band=None if spec.band is None else 2 * number(spec.band, "SparseMixer band"),
    )


def _scores(z: Tensor, rule: RoutingRule) -> Tensor:
    return torch.softmax(z, dim=-1) if rule.score == "softmax" else torch.sigmoid(z)


def _mask(n: int, experts: Collection[int], device: torch.device) -> Tensor:
    out = torch.zeros(n, dtype=torch.bool, device=device)
    if experts:
        out[torch.as_tensor(sorted(experts), device=device)] = True
    return out


def selection_scores(
    logits: Float[Tensor, "row expert"], rule: RoutingRule, *, bias: Tensor | None = None
) -> Float[Tensor, "row expert"]:
    """What the family's top-k ranks, before any group mask: score + selection bias for
    ``select="score"``, the logits otherwise."""
    z = logits.float() if rule.float32 else logits
    if rule.select != "score":
        return z
    p = _scores(z, rule)
    return p if bias is None else p + bias


def _group_mask(choice: Tensor, rule: RoutingRule, forced: Tensor | None) -> Tensor:
    """Experts inside the kept groups, ``(rows, experts)`` booleans."""
    G, keep = int(rule.n_group or 1), int(rule.topk_group or 1)
    rows, E = choice.shape
    if E % G:
        raise SpecMismatchError(f"{E} experts do not split into {G} equal groups")
    grouped = choice.view(rows, G, E // G)
    if rule.group_score == "max":
        group_scores = grouped.max(dim=-1).values
    else:
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
    if forced is not None:  # forced experts keep their groups
        hold = forced.view(G, E // G).any(-1)
        group_scores = group_scores.masked_fill(hold, float("inf"))
    group_idx = torch.topk(group_scores, k=keep, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    return group_mask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E).bool()


def _sparsemixer(
    z: Tensor, rule: RoutingRule, k: int, forced: Tensor | None
) -> tuple[Tensor, Tensor]:
    """PhiMoE's SparseMixer in eval, rank by rank (the family's two ranks, generalised to k).

    At each rank the chosen expert is the best remaining one (forced experts first, best
    first); its weight is the softmax, over the remaining experts whose logit lies within
    the relative band of the chosen one's, taken at the chosen expert.
    """
    band = float(rule.band or 0.0)
    remaining = z
    weights, chosen = [], []
    for r in range(k):
        if forced is not None and r < forced.shape[-1]:
            sel = forced[:, r : r + 1]
            threshold = z.gather(-1, sel)
        else:
            threshold, sel = remaining.max(dim=-1, keepdim=True)
        factor = z.abs().clamp(min=threshold)
        outside = ((threshold - z) / factor) > band
        gates = torch.softmax(remaining.masked_fill(outside, float("-inf")), dim=-1)
        weights.append(gates.gather(dim=-1, index=sel))
        chosen.append(sel)
        remaining = torch.scatter(remaining, -1, sel, float("-inf"))
    return torch.concat(weights, dim=-1), torch.concat(chosen, dim=-1)


def route(
    logits: Float[Tensor, "row expert"],
    rule: RoutingRule,
    *,
    bias: Float[Tensor, " expert"] | None = None,
    expert_scale: Float[Tensor, " expert"] | None = None,
    k: int,
    banned: Collection[int] = frozenset(),
    forced: Collection[int] = frozenset(),
    scales: Mapping[int, float] | None = None,
    layer: int | None = None,
) -> tuple[Float[Tensor, "row k"], Int[Tensor, "row k"]]:
    """The chosen experts and their weights under ``rule``, given a routing request.

    Parameters
    ----------
    logits
        The router's logits, one row per token.
    rule
        The family's rule (:func:`routing_rule`; a model gives its own with
        ``model.routing_rule(layer)``).
    bias, expert_scale
        The router's selection bias and per-expert scale, where the rule has them
        (``model.selection_bias(layer)``, ``model.expert_scale(layer)``).
    k
        Experts per token.
    banned, forced, scales
        The request (see the module docstring). With none, the result is the family's
        own routing, bit for bit. An impossible request (an expert both banned and
        forced, more forced than ``k``, bans leaving fewer than ``k``) is refused by
        :func:`~mechmoe.core.interventions.check_request`, naming ``layer``.

    Returns
    -------
    (weights, index)
        ``(rows, k)`` each, in the family's slot order.
    """
    E = logits.shape[-1]
    banned, forced = {int(e) for e in banned}, {int(e) for e in forced}
    bad = sorted(e for e in banned | forced if not 0 <= e < E)
    if bad:
        at = "" if layer is None else f" at layer {layer}"
        raise InvalidInputError(f"expert {bad[0]}{at} is out of range: the router has {E} experts")
    if k < 1:
        raise InvalidInputError(f"top-k must be at least 1, not {k}")
    check_request(layer, RoutingRequest(banned=banned, forced=forced, k=k), n_experts=E, top_k=k)
    z = logits.float() if rule.float32 else logits
    dev = z.device
    ban = _mask(E, banned, dev) if banned else None
    force = _mask(E, forced, dev) if forced else None
    if ban is not None:
        z = z.masked_fill(ban, float("-inf"))

    if rule.select == "sparsemixer":
        rows = None
        if forced:  # forced experts take the first ranks, the best-scored first
            ids = torch.as_tensor(sorted(forced), device=dev)
            order = z[:, ids].argsort(dim=-1, descending=True, stable=True)
            rows = ids[order]
        weights, index = _sparsemixer(z, rule, k, rows)
    elif rule.select == "logits":
        choice = z if force is None else z.masked_fill(force, float("inf"))
        top, index = torch.topk(choice, k, dim=-1, sorted=rule.sorted)
        if force is not None:
            top = z.gather(-1, index)
        weights = torch.softmax(top, dim=-1) if rule.score == "softmax" else torch.sigmoid(top)
    else:
        p = _scores(z, rule)
        choice = p if bias is None else p + bias
        if ban is not None:
            choice = choice.masked_fill(ban, float("-inf"))
        if rule.n_group:
            keep = _group_mask(choice, rule, force)
            choice = choice.masked_fill(~keep, float("-inf"))
        if force is not None:
            choice = choice.masked_fill(force, float("inf"))
        index = torch.topk(choice, k=k, dim=-1, sorted=rule.sorted)[1]
        if (ban is not None or rule.n_group) and bool(
            torch.isneginf(choice.gather(-1, index)).any()
        ):
            raise InvalidInputError(
                f"fewer than k={k} experts are selectable for some tokens once banned experts "
                f"and the {rule.topk_group} kept of {rule.n_group} groups are counted"
            )
        weights = p.gather(1, index)
    if rule.renormalize:
        total = weights.sum(dim=-1, keepdim=True)
        if rule.renorm_min is not None:
            total = torch.clamp(total, min=rule.renorm_min)
        if rule.renorm_eps:
            total = total + rule.renorm_eps
        weights = weights / total
    if rule.scale is not None:
        weights = weights * rule.scale
    if expert_scale is not None:
        weights = weights * expert_scale[index]
    if rule.weights_dtype is not None:
        weights = weights.to(rule.weights_dtype)
    return _scaled(weights, index, scales, E), index


def _scaled(weights: Tensor, index: Tensor, scales: Mapping[int, float] | None, E: int) -> Tensor:
    """``weights`` with each scaled expert's weight multiplied where it is chosen."""
    if not scales:
        return weights
    factor = torch.ones(E, dtype=weights.dtype, device=weights.device)
    for e, f in scales.items():
        factor[int(e)] = f
    return weights * factor[index]


def reroute(
    router: RouterOutput,
    request: RoutingRequest,
    rule: RoutingRule,
    *,
    layer: int,
    bias: Float[Tensor, " expert"] | None = None,
    expert_scale: Float[Tensor, " expert"] | None = None,
) -> RouterOutput:
    """The routing of one MoE layer under a merged routing ``request``, by ``rule``.

    ``router`` is what the layer's router gave for every token row (raw logits, the
    weights and experts it chose); ``bias`` and ``expert_scale`` are the router's
    selection bias and per-expert scale where the family has them. A request that bans,
    forces or sets ``k`` re-derives selection and weights with :func:`route`; one that
    only scales keeps the router's own choice and weights bit for bit and multiplies the
    scaled experts' weights. The result keeps the raw logits. ``layer`` names the layer
    in errors.
    """
    scales = dict(request.scales)
    if not request.reroutes:
        weights = _scaled(router.weights, router.index, scales, router.logits.shape[-1])
        return RouterOutput(router.logits, weights, router.index)
    k = request.k if request.k is not None else router.index.shape[-1]
    weights, index = route(
        router.logits,
        rule,
        bias=bias,
        expert_scale=expert_scale,
        k=k,
        banned=request.banned,
        forced=request.forced,
        scales=scales,
        layer=layer,
    )
    return RouterOutput(router.logits, weights.to(router.weights.dtype), index)


__all__ = ["RoutingRule", "reroute", "route", "routing_rule", "selection_scores"]
