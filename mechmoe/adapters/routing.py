"""The routing rule: how a layer re-derives its routing under a routing request.

A routing intervention never routes by itself: its merged
:class:`~mechmoe.core.interventions.RoutingRequest` goes to the model
(``Model.reroute``), which calls :func:`reroute` with the layer's rule parameters read
from the adapter spec and the config (:func:`routing_rule`). Every routing decision —
banned experts, forced experts, top-k, gate scales — is taken here, in one function.

The rule today (every built-in MoE family: OLMoE, Mixtral, Qwen-MoE):

1. scores: softmax over the router logits in float32, banned experts at −∞;
2. selection: forced experts take a slot first (their score is lifted above any
   probability), the other slots go to the highest scores (``torch.topk``);
3. gates: the chosen experts' probabilities, renormalised to sum to one only where the
   model renormalises (:attr:`RoutingRule.renormalize`), cast back to the router's dtype;
4. then each gate scale multiplies its expert's gate where it is chosen.

A request with no ban, force or top-k keeps the router's own choice and gates (bit for
bit) and only applies the scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mechmoe.adapters.spec import AdapterSpec, config_value
from mechmoe.core.errors import SpecMismatchError
from mechmoe.core.interventions import RoutingRequest, check_request
from mechmoe.core.types import RouterOutput


@dataclass(frozen=True)
class RoutingRule:
    """The parameters of a layer's routing rule.

    ``renormalize``: whether the chosen experts' probabilities are renormalised to sum
    to one (the spec's ``MoESpec.renormalize``: a fixed bool or a config flag).
    """

    renormalize: bool


def routing_rule(spec: AdapterSpec, config: Any) -> RoutingRule:
    """The routing rule of a model with adapter ``spec`` and HF ``config``.

    A config without the renormalisation flag named by the spec means no renormalisation.
    """
    moe = spec.moe
    if moe is None:
        return RoutingRule(renormalize=False)
    if isinstance(moe.renormalize, bool):
        return RoutingRule(renormalize=moe.renormalize)
    try:
        flag = bool(config_value(config, moe.renormalize, what="renormalisation flag"))
    except SpecMismatchError:
        flag = False
    return RoutingRule(renormalize=flag)


def reroute(
    router: RouterOutput, request: RoutingRequest, rule: RoutingRule, *, layer: int
) -> RouterOutput:
    """The routing of one layer under ``request``, by ``rule``.

    ``router`` is what the layer's router returned for every token row (raw logits, the
    gates and experts it chose); the result keeps the raw logits and carries the gates
    and experts the block must use. ``layer`` names the layer in errors.
    """
    logits = router.logits
    E = logits.shape[-1]
    if not request.reroutes:
        weights, index = router.weights, router.index
    else:
        k = request.k if request.k is not None else router.index.shape[-1]
        check_request(layer, request, n_experts=E, top_k=k)
        z = logits.float()
        if request.banned:
            ban = torch.zeros(E, dtype=torch.bool, device=z.device)
            ban[sorted(request.banned)] = True
            z = z.masked_fill(ban, float("-inf"))
        probs = torch.softmax(z, dim=-1)
        score = probs
        if request.forced:
            force = torch.zeros(E, dtype=torch.bool, device=z.device)
            force[sorted(request.forced)] = True
            score = probs.masked_fill(force, 2.0)  # probabilities are ≤ 1: forced win
        _, index = torch.topk(score, k, dim=-1)
        weights = probs.gather(-1, index)
        if rule.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(router.weights.dtype)
    if request.scales:
        factor = torch.ones(E, dtype=weights.dtype, device=weights.device)
        for e, f in request.scales:
            factor[e] = f
        weights = weights * factor[index]
    return RouterOutput(logits, weights, index)


__all__ = ["RoutingRule", "reroute", "routing_rule"]
