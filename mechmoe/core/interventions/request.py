"""The routing request: what the routing values of a plan ask of one MoE layer, merged.

Every routing value (:class:`~mechmoe.core.interventions.RoutingEdit`, built-in or not)
states its requests per layer; a plan merges them into one :class:`RoutingRequest` per
layer (:meth:`RoutingRequest.merge`), checks each merged request with
:func:`check_request` (the one check, with or without a model) and hands it to the
model's routing rule once per layer and pass (``ModelView.reroute``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import SupportsFloat, SupportsIndex

from mechmoe.core.errors import InvalidInputError
from mechmoe.core.interventions.normalise import as_factor, as_index, init_fields


def where(layer: int | None) -> str:
    """How messages name a layer key (``None``: every MoE layer of the model)."""
    return "every MoE layer" if layer is None else f"layer {layer}"


@dataclass(frozen=True, init=False)
class RoutingRequest:
    """What routing values ask of one MoE layer.

    ``banned`` experts are never chosen; ``forced`` experts always take a slot; ``k`` is
    the number of experts per token (``None``: the model's own); ``scales`` are
    ``(expert, factor)`` pairs that multiply the gates of those experts where they are
    chosen (the other gates are not renormalised). A request with no ban, force or ``k``
    keeps the router's own choice and gates (scales still apply).

    Examples
    --------
    >>> a = RoutingRequest(banned=[3], scales={1: 0.5})
    >>> a.merge(RoutingRequest(k=4, scales={1: 0.5}), layer=0)
    RoutingRequest(banned=frozenset({3}), forced=frozenset(), k=4, scales=((1, 0.25),))
    """

    banned: frozenset[int]
    forced: frozenset[int]
    k: int | None
    scales: tuple[tuple[int, float], ...]

    def __init__(
        self,
        *,
        banned: Iterable[SupportsIndex] = (),
        forced: Iterable[SupportsIndex] = (),
        k: SupportsIndex | None = None,
        scales: Mapping[SupportsIndex, SupportsFloat]
        | Iterable[tuple[SupportsIndex, SupportsFloat]] = (),
    ) -> None:
        top_k = None if k is None else as_index(k, "top-k")
        if top_k == 0:
            raise InvalidInputError("a routing request's top-k must be at least 1")
        pairs = scales.items() if isinstance(scales, Mapping) else scales
        factors: dict[int, float] = {}
        for e, f in pairs:
            expert = as_index(e, "expert")
            # an expert scaled twice is scaled by the product
            factors[expert] = factors.get(expert, 1.0) * as_factor(
                f, f"gate factor of expert {expert}"
            )
        init_fields(
            self,
            banned=frozenset(as_index(e, "expert") for e in banned),
            forced=frozenset(as_index(e, "expert") for e in forced),
            k=top_k,
            scales=tuple(sorted(factors.items())),
        )

    @property
    def reroutes(self) -> bool:
        """Whether routing must be re-derived (a ban, a force or a top-k)."""
        return bool(self.banned or self.forced or self.k is not None)

    def experts(self) -> frozenset[int]:
        """Every expert the request names."""
        return self.banned | self.forced | {e for e, _ in self.scales}

    def is_empty(self) -> bool:
        """True when the request changes nothing."""
        return not self.reroutes and all(f == 1.0 for _, f in self.scales)

    def merge(self, other: RoutingRequest, layer: int | None) -> RoutingRequest:
        """Both requests at once: bans and forces unite, ``k`` must agree, scales multiply.

        ``layer`` names the layer in the error raised for two different ``k``.
        """
        if self.k is not None and other.k is not None and self.k != other.k:
            raise InvalidInputError(
                f"contradictory routing at {where(layer)}: top-k set to both {self.k} and {other.k}"
            )
        scales = dict(self.scales)
        for e, f in other.scales:
            scales[e] = scales.get(e, 1.0) * f
        return RoutingRequest(
            banned=self.banned | other.banned,
            forced=self.forced | other.forced,
            k=self.k if self.k is not None else other.k,
            scales=scales,
        )


def check_request(
    layer: int | None,
    request: RoutingRequest,
    *,
    n_experts: int | None = None,
    top_k: int | None = None,
) -> None:
    """Refuse a merged request that contradicts itself, naming the layer and expert.

    Without ``n_experts`` (no model yet) only what needs no model is checked (an expert
    both banned and forced); with the layer's expert count and top-k also a ``k`` over
    the expert count, more experts forced than ``k``, and bans that leave fewer than
    ``k`` experts.
    """
    both = sorted(request.banned & request.forced)
    if both:
        raise InvalidInputError(
            f"contradictory routing at {where(layer)}: expert {both[0]} is both banned and forced"
        )
    if n_experts is None:
        return
    k = request.k if request.k is not None else top_k
    if k is None:
        return
    if k > n_experts:
        raise InvalidInputError(
            f"SetTopK: k={k} at {where(layer)} is out of range; the layer has {n_experts} experts"
        )
    if len(request.forced) > k:
        raise InvalidInputError(
            f"contradictory routing at {where(layer)}: {len(request.forced)} experts forced but "
            f"top-k is {k}; add SetTopK(k) with k ≥ the number forced"
        )
    if n_experts - len(request.banned) < k:
        raise InvalidInputError(
            f"contradictory routing at {where(layer)}: {len(request.banned)} of {n_experts} "
            f"experts banned leaves fewer than top-k={k}"
        )


__all__ = ["RoutingRequest", "check_request", "where"]
