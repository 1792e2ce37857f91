"""Routing values: each states what it asks of routing per layer; a plan merges the requests.

:class:`RoutingEdit` is the one base of every routing value, mechmoe's and third-party
ones: a subclass implements :meth:`RoutingEdit.requests` and inherits the rest: range
checks, the combination checks (one function over the merged requests,
:func:`~mechmoe.core.interventions.check_request`) and the pass, which hands each MoE
layer's merged request once to the model's routing rule (``model.reroute``). Where the
rule lives, and what it computes, is :mod:`mechmoe.adapters.routing`.

Examples
--------
A third-party value that bans the odd-numbered experts of every MoE layer; it merges and
is checked with the built-in values:

>>> from mechmoe.core.interventions import ForceExperts, RoutingEdit, RoutingRequest
>>> from mechmoe.core.interventions.checks import moe_layers
>>> class BanOdd(RoutingEdit):
...     def requests(self, model):
...         if model is None:  # which experts exist is known only with a model
...             return {}
...         return {
...             la: RoutingRequest(banned=range(1, model.dims.n_experts[la], 2))
...             for la in moe_layers(model)
...         }
>>> from mechmoe.testing import tiny_model
>>> (BanOdd() + ForceExperts({0: [1]})).validate(tiny_model("olmoe"))
Traceback (most recent call last):
...
mechmoe.core.errors.InvalidInputError: contradictory routing at layer 0: expert 1 is both banned and forced
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, SupportsFloat, SupportsIndex

from mechmoe.core.edits import Need, Site
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.interventions.checks import check_expert, check_moe_layer, moe_layers
from mechmoe.core.interventions.normalise import (
    LayerFactors,
    LayerFactorsInput,
    LayerSets,
    LayerSetsInput,
    as_index,
    init_fields,
    layer_factors,
    layer_sets,
)
from mechmoe.core.interventions.plan import Intervention
from mechmoe.core.interventions.request import RoutingRequest, check_request
from mechmoe.core.types import RouterOutput

if TYPE_CHECKING:
    from mechmoe.core.edits import EditContext
    from mechmoe.core.types import ModelView

#: per-layer requests; the key ``None`` stands for every MoE layer of the model
Requests = Mapping[int | None, RoutingRequest]


def merge_requests(
    values: Iterable[RoutingEdit], model: ModelView | None
) -> dict[int | None, RoutingRequest]:
    """The values' requests merged per layer, in value order.

    With a model, 'every MoE layer' is resolved to the model's MoE layers; without one
    (a plan being built) it stays a key of its own.
    """
    out: dict[int | None, RoutingRequest] = {}
    every = None if model is None else moe_layers(model)
    for value in values:
        for key, request in value.requests(model).items():
            for layer in (key,) if key is not None or every is None else every:
                seen = out.get(layer)
                out[layer] = request if seen is None else seen.merge(request, layer)
    return out


class RoutingEdit(Intervention, family=True):
    """Base of every routing value: its per-layer requests join the plan's routing.

    A subclass implements :meth:`requests`. In a plan, every routing value's requests at
    one layer merge into one :class:`RoutingRequest` (bans and forces unite, ``k`` must
    agree, gate factors multiply); the merged requests are checked by one function
    (:func:`~mechmoe.core.interventions.check_request`) when the plan is built and again
    with the model before the pass, and the pass applies each layer's merged request
    once through the model's routing rule.
    """

    sites: ClassVar[frozenset[Site]] = frozenset({"router"})

    @abstractmethod
    def requests(self, model: ModelView | None) -> Requests:
        """This value's routing requests by layer (key ``None``: every MoE layer).

        ``model`` is ``None`` when a plan is built: return what is known without a model
        (``{}`` if the requests depend on it); before the pass it is the model.
        """

    def validate(self, model: ModelView) -> None:
        """Each request's layer must be an MoE layer of ``model`` and its experts and ``k``
        in range; messages name the value's class."""
        name = type(self).__name__
        every = moe_layers(model)
        for key, request in self.requests(model).items():
            if key is None and not every:
                raise InvalidInputError(f"{name} needs a router, but {model.name} has no MoE layer")
            for layer in every if key is None else (key,):
                check_moe_layer(model, layer, name)
                for e in sorted(request.experts()):
                    check_expert(model, layer, e, name)
                n = model.dims.n_experts[layer]
                if request.k is not None and request.k > n:
                    raise InvalidInputError(
                        f"{name}: k={request.k} at layer {layer} is out of range; "
                        f"the layer has {n} experts"
                    )

    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(la for la in self.requests(None) if la is not None))

    @classmethod
    def check_combination(cls, values: Sequence[RoutingEdit], model: ModelView | None) -> None:
        """Merge the values' requests per layer and check each merged request."""
        for layer, request in sorted(merge_requests(values, model).items(), key=_layer_order):
            if model is None or layer is None:
                check_request(layer, request)
            else:
                n, k = model.dims.n_experts[layer], model.dims.top_k[layer]
                check_request(layer, request, n_experts=n, top_k=k)

    @classmethod
    def merged(cls, values: Sequence[RoutingEdit]) -> _RoutingPass:
        return _RoutingPass(tuple(values))

    def apply(
        self, site: Site, layer: int, value: RouterOutput, ctx: EditContext
    ) -> RouterOutput | None:
        return _RoutingPass((self,)).apply(site, layer, value, ctx)


def _layer_order(item: tuple[int | None, RoutingRequest]) -> int:
    return -1 if item[0] is None else item[0]


class _RoutingPass:
    """All routing values of a plan as one edit: each MoE layer's merged request is
    applied once, through the model's routing rule, to the router's own output."""

    sites: frozenset[Site] = frozenset({"router"})
    needs: frozenset[Need] = frozenset()

    def __init__(self, values: tuple[RoutingEdit, ...]) -> None:
        self.values = values
        self._merged: tuple[ModelView, dict[int | None, RoutingRequest]] | None = None

    def __repr__(self) -> str:
        return " + ".join(repr(it) for it in self.values)

    def validate(self, model: ModelView) -> None:
        return None  # the plan's check has validated the values and their combination

    def requests(self, model: ModelView) -> dict[int | None, RoutingRequest]:
        """The merged requests on ``model`` (merged once per model)."""
        if self._merged is None or self._merged[0] is not model:
            self._merged = (model, merge_requests(self.values, model))
        return self._merged[1]

    def apply(
        self, site: Site, layer: int, value: RouterOutput, ctx: EditContext
    ) -> RouterOutput | None:
        request = self.requests(ctx.model).get(layer)
        if request is None:
            return None
        return ctx.model.reroute(layer, value, request)


# ---- the built-in routing values ------------------------------------------------------


@dataclass(frozen=True, init=False, repr=False)
class _ExpertSets(RoutingEdit):
    """Routing values that name ``{layer: [expert, …]}`` (one set of the request)."""

    experts: LayerSets

    def __init__(self, experts: LayerSetsInput) -> None:
        init_fields(self, experts=layer_sets(experts, "expert"))

    def __repr__(self) -> str:
        body = ", ".join(f"{la}: {list(e)}" for la, e in self.experts)
        return f"{type(self).__name__}({{{body}}})"

    def is_empty(self) -> bool:
        return not self.experts


@dataclass(frozen=True, init=False, repr=False)
class BanExperts(_ExpertSets):
    """Take experts out of routing: their router logit becomes −∞ and routing is re-derived.

    ``experts`` is ``{layer: [expert, …]}`` or ``(layer, expert)`` pairs. Selection and
    weights are re-derived by the family's rule over the experts left (a banned expert's
    logit and selection score are −∞ before any selection bias or group-limited choice;
    weights renormalised only where the family renormalises).
    """

    def requests(self, model: ModelView | None) -> Requests:
        return {la: RoutingRequest(banned=es) for la, es in self.experts}


@dataclass(frozen=True, init=False, repr=False)
class ForceExperts(_ExpertSets):
    """Make experts always take a top-k slot at their layer.

    ``experts`` is ``{layer: [expert, …]}`` or ``(layer, expert)`` pairs. The other slots go
    to the experts the family's rule would choose among the rest (its groups kept for a
    forced expert); every weight is the family's weight of its expert (e.g. the softmax
    probability, or the unbiased sigmoid score × scale), renormalised over the chosen
    experts only where the family renormalises. Forcing more experts than top-k needs a
    :class:`SetTopK` in the same plan.
    """

    def requests(self, model: ModelView | None) -> Requests:
        return {la: RoutingRequest(forced=es) for la, es in self.experts}


@dataclass(frozen=True, init=False, repr=False)
class SetTopK(RoutingEdit):
    """Route every token to ``k`` experts by the model's own rule.

    ``layers=None`` means every MoE layer. With ``k`` = the number of experts and a
    renormalising model, the block computes the full soft mixture.
    """

    k: int
    only: tuple[int, ...] | None

    def __init__(self, k: SupportsIndex, layers: Iterable[SupportsIndex] | None = None) -> None:
        top_k = as_index(k, "top-k")
        if top_k < 1:
            raise InvalidInputError("SetTopK: k must be at least 1")
        only = None if layers is None else tuple(sorted({as_index(la, "layer") for la in layers}))
        init_fields(self, k=top_k, only=only)

    def __repr__(self) -> str:
        if self.only is None:
            return f"SetTopK({self.k})"
        return f"SetTopK({self.k}, layers={list(self.only)})"

    def is_empty(self) -> bool:
        return self.only == ()

    def targets(self, model: ModelView) -> tuple[int, ...]:
        """The MoE layers this value applies to on ``model``."""
        return moe_layers(model) if self.only is None else self.only

    def requests(self, model: ModelView | None) -> Requests:
        request = RoutingRequest(k=self.k)
        return {None: request} if self.only is None else dict.fromkeys(self.only, request)


@dataclass(frozen=True, init=False, repr=False)
class ScaleGates(RoutingEdit):
    """Multiply experts' gates (where they are chosen) by a factor; routing is unchanged.

    ``gates`` is ``{layer: {expert: factor}}``, or ``{layer: [expert, …]}`` / pairs with
    ``factor=``. The other gates are *not* renormalised, so this is the same as scaling
    the expert's output weights.
    """

    gates: LayerFactors

    def __init__(self, gates: LayerFactorsInput, factor: SupportsFloat | None = None) -> None:
        init_fields(self, gates=layer_factors(gates, factor, "expert"))

    def __repr__(self) -> str:
        body = ", ".join(f"{la}: {dict(row)}" for la, row in self.gates)
        return f"{type(self).__name__}({{{body}}})"

    def is_empty(self) -> bool:
        return all(f == 1.0 for _, row in self.gates for _, f in row)

    def requests(self, model: ModelView | None) -> Requests:
        return {la: RoutingRequest(scales=row) for la, row in self.gates}


class ZeroExperts(ScaleGates):
    """Silence experts: they keep their routing slot but add nothing (gate × 0).

    ``experts`` is ``{layer: [expert, …]}`` or ``(layer, expert)`` pairs.
    """

    def __init__(self, experts: LayerSetsInput) -> None:
        super().__init__(experts, factor=0.0)

    def __repr__(self) -> str:
        return f"ZeroExperts({{{', '.join(f'{la}: {[e for e, _ in row]}' for la, row in self.gates)}}})"

    def is_empty(self) -> bool:
        return not self.gates


__all__ = [
    "BanExperts",
    "ForceExperts",
    "Requests",
    "RoutingEdit",
    "ScaleGates",
    "SetTopK",
    "ZeroExperts",
    "merge_requests",
]
