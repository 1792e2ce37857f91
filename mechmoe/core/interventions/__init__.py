"""Interventions: frozen, typed, composable edits applied inside the one capture pass.

Each intervention is an immutable value that implements the
:class:`~mechmoe.core.edits.Edit` protocol, so it can be handed to anything that runs
a capture (``model.capture``, :func:`mechmoe.probes.evaluate`, attribution). Values
compose with ``+`` (or :func:`compose` over a list) into a :class:`Plan`; a plan checks
the whole combination against the model *before* the forward pass, so contradictions
(banning and forcing the same expert, a top-k smaller than the experts forced, two
masking modes for one head) fail early with the layer, head or expert named.

What each value does, and the weight surgery it is equivalent to:

================  =================================================  ======================================
value             effect in the forward pass                         same as (weight surgery)
================  =================================================  ======================================
``MaskHeads``     replace heads' slices of the o_proj input by 0     zero W_O's columns of those heads
                  (``"zero"``) or by a mean (``"mean"``)             (mean: also add ``W_O[:, h]·mean`` to
                                                                     the o_proj bias)
``BanExperts``    banned experts get router logit −∞; routing is     a router bias of −∞ on those rows
                  re-derived (softmax → top-k → renormalise where
                  the model does)
``ForceExperts``  forced experts always take a top-k slot; gates     (no surgery: routing done by hand)
                  are their softmax probabilities, renormalised
                  only where the model renormalises
``SetTopK``       route each token to ``k`` experts by the model's   a config with ``num_experts_per_tok=k``
                  own rule
``ScaleGates``    multiply the gate of an expert (where chosen)      scale that expert's ``down_proj``
``ZeroExperts``   ``ScaleGates`` by 0: the expert keeps its slot     zero that expert's ``down_proj``
                  but adds nothing
``ScaleNeurons``  multiply one neuron's activation                   scale that ``down_proj`` column
``ZeroNeurons``   ``ScaleNeurons`` by 0                              zero that ``down_proj`` column
================  =================================================  ======================================

Composition means applying one value after the other: scalings multiply (two
``ScaleNeurons({n: 2})`` scale ``n`` by 4, as does listing ``n`` twice in one value; gate
factors multiply; zero after a scale is zero); routing values (ban, force, top-k, gate
factors; mechmoe's and any :class:`RoutingEdit` subclass) state per-layer
:class:`RoutingRequest` values that merge into one request per layer, whatever their
order, applied once by the model's routing rule; a mask applied twice is applied once,
and two different masks on one head are refused. docs/interventions.md has the rule of
every pair of kinds. The router's logits in the capture stay the raw router scores; the
captured gates and indices are the ones the edited pass used.

The package: :mod:`~.normalise` (user input → normalised fields), :mod:`~.plan`
(:class:`Intervention`, :class:`Plan`, :func:`compose`, :func:`as_edits`),
:mod:`~.heads`, :mod:`~.routing` and :mod:`~.request` (the routing request, its merge
and its one check), :mod:`~.neurons`, and :mod:`~.checks` (range checks).

Examples
--------
>>> from mechmoe.testing import tiny_model
>>> from mechmoe.core.interventions import BanExperts, MaskHeads, SetTopK
>>> model = tiny_model("olmoe")
>>> plan = MaskHeads({0: [1, 3]}) + BanExperts({1: [0]}) + SetTopK(3)
>>> cap = model.capture(["The capital of France is"], interventions=plan)
>>> 0 in cap.layers[1].expert_idx.flatten().tolist()
False
"""

from __future__ import annotations

from mechmoe.core.interventions.heads import MaskHeads, MaskMode
from mechmoe.core.interventions.neurons import ScaleNeurons, ZeroNeurons
from mechmoe.core.interventions.plan import Intervention, Plan, as_edits, compose
from mechmoe.core.interventions.request import RoutingRequest, check_request
from mechmoe.core.interventions.routing import (
    BanExperts,
    ForceExperts,
    RoutingEdit,
    ScaleGates,
    SetTopK,
    ZeroExperts,
)

__all__ = [
    "BanExperts",
    "ForceExperts",
    "Intervention",
    "MaskHeads",
    "MaskMode",
    "Plan",
    "RoutingEdit",
    "RoutingRequest",
    "ScaleGates",
    "ScaleNeurons",
    "SetTopK",
    "ZeroExperts",
    "ZeroNeurons",
    "as_edits",
    "check_request",
    "compose",
]
