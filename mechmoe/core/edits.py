"""The edit protocol: how an intervention plugs into a backend's forward pass.

A backend runs one pass and, at each *site* of each layer, hands the value there to the
edits that declared the site; an edit returns a replacement or ``None``. An edit also
declares what else it *needs* to read during the pass (the FFN input, the routing the
block used), so a backend records only that: a lone head mask keeps nothing.

Site values, in the full ``(batch, seq)`` layout of the pass:

===============  ================================================================
site             value
===============  ================================================================
``resid_pre``    ``(batch, seq, d_model)``: the decoder layer's input ``h[l-1]``
``heads``        ``(batch, seq, head, head_dim)``: the attention output
                 projection's input, one slice per head
``router``       :class:`~mechmoe.core.types.RouterOutput` with ``batch·seq`` rows
``experts_out``  ``(batch·seq, d_model)``: the routed experts' summed output
                 (before a shared expert is added)
``ffn_out``      ``(batch, seq, d_model)``: the FFN module's output (before any
                 post-norm)
===============  ================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, runtime_checkable

from torch import Tensor

from mechmoe.core.errors import InvalidInputError
from mechmoe.core.types import Batch, ModelView, RouterOutput

Site = Literal["resid_pre", "heads", "router", "experts_out", "ffn_out"]
SITES: tuple[Site, ...] = ("resid_pre", "heads", "router", "experts_out", "ffn_out")

Need = Literal["ffn_in", "routing"]
NEEDS: frozenset[Need] = frozenset({"ffn_in", "routing"})

_T = TypeVar("_T")

#: a site's value: a tensor, or the router's output at ``router``
SiteValue = Tensor | RouterOutput


@runtime_checkable
class Edit(Protocol):
    """An intervention applied inside the capture pass.

    ``sites`` names the sites it touches and ``needs`` what it reads besides the site's
    value (``"ffn_in"``: :meth:`EditContext.ffn_in`; ``"routing"``:
    :meth:`EditContext.routing`); an edit without a ``needs`` attribute is given
    everything. ``validate`` checks it against a model before any forward pass and raises
    :class:`~mechmoe.core.errors.InvalidInputError`; ``apply`` returns the new value for
    ``site`` at ``layer`` (or ``None`` to leave it).
    """

    sites: frozenset[Site]

    def validate(self, model: ModelView) -> None: ...

    def apply(
        self, site: Site, layer: int, value: SiteValue, ctx: EditContext
    ) -> SiteValue | None: ...


@dataclass
class EditContext:
    """What an edit may read while it runs: the model, the batch, and what it declared.

    Backends record a layer's FFN input (``record_ffn_in``, flattened to ``batch·seq``
    rows) and the routing the block used (``record_routing``, after any router edit) only
    when :attr:`needs` asks for them.
    """

    model: ModelView
    batch: Batch
    needs: frozenset[Need] = frozenset()
    _ffn_in: dict[int, Tensor] = field(default_factory=dict, repr=False)
    _routing: dict[int, RouterOutput] = field(default_factory=dict, repr=False)

    def record_ffn_in(self, layer: int, x: Tensor) -> None:
        self._ffn_in[layer] = x

    def record_routing(self, layer: int, routing: RouterOutput) -> None:
        self._routing[layer] = routing

    def ffn_in(self, layer: int) -> Tensor:
        """Layer ``layer``'s FFN input as ``(batch·seq, d_model)``."""
        missing = (
            "an edit that reads it must declare needs = frozenset({'ffn_in'}) "
            "and run after the FFN input"
        )
        return _recorded(self._ffn_in, layer, f"the FFN input of layer {layer}", missing)

    def routing(self, layer: int) -> RouterOutput:
        """The routing layer ``layer`` used in this pass (after any router edit)."""
        missing = "it is dense, or an edit that reads routing did not declare needs = frozenset({'routing'})"
        return _recorded(self._routing, layer, f"the routing of layer {layer}", missing)


def _recorded(table: Mapping[int, _T], layer: int, what: str, why: str) -> _T:
    if layer not in table:
        raise InvalidInputError(f"{what} was not recorded in this pass: {why}")
    return table[layer]


def needs_of(edits: Sequence[Edit]) -> frozenset[Need]:
    """Everything ``edits`` read besides their sites' values (all of :data:`NEEDS` for an
    edit that declares no ``needs``)."""
    out: set[Need] = set()
    for e in edits:
        out |= set(getattr(e, "needs", NEEDS))
    return frozenset(out)


def sites_of(edits: Sequence[Edit]) -> frozenset[Site]:
    """Every site ``edits`` touch."""
    out: set[Site] = set()
    for e in edits:
        out |= set(e.sites)
    return frozenset(out)


def apply_edits(
    edits: Sequence[Edit], site: Site, layer: int, value: SiteValue, ctx: EditContext
) -> SiteValue:
    """Run the edits registered for ``site`` on ``value``, in order."""
    for e in edits:
        if site in e.sites:
            new = e.apply(site, layer, value, ctx)
            if new is not None:
                value = new
    return value


__all__ = [
    "NEEDS",
    "SITES",
    "Edit",
    "EditContext",
    "Need",
    "Site",
    "SiteValue",
    "apply_edits",
    "needs_of",
    "sites_of",
]
