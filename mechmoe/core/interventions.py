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
factors multiply; zero after a scale is zero); routing values (ban, force, top-k) at one
layer merge into one routing decision, whatever their order, and gate factors multiply
the re-derived gates; a mask applied twice is applied once, and two different masks on
one head are refused. docs/interventions.md has the rule of every pair of kinds. The
router's logits in the capture stay the raw router scores; the captured gates and
indices are the ones the edited pass used.

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

import math
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from mechmoe.core.edits import Edit
from mechmoe.core.errors import InvalidInputError, InvalidTypeError
from mechmoe.core.types import RouterOutput

if TYPE_CHECKING:
    from mechmoe.core.edits import EditContext
    from mechmoe.core.types import ModelView as Model

MaskMode = Literal["zero", "mean"]

# ---------------------------------------------------------------------------------------
# normalisation of user input into sorted tuples (the values stay hashable and comparable)


def _index(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise InvalidInputError(f"{what} must be an integer, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise InvalidInputError(f"{what} must be an integer, got {value!r}") from None
    if out < 0:
        raise InvalidInputError(f"{what} must be non-negative, got {out}")
    return out


def _factor(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise InvalidInputError(f"{what} must be finite, got {out}")
    return out


def _layer_sets(spec: Any, what: str) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """``{layer: [i, …]}`` or ``[(layer, i), …]`` → ``((layer, (i, …)), …)`` sorted."""
    merged: dict[int, set[int]] = {}
    if isinstance(spec, Mapping):
        pairs: Iterable[Any] = (
            (layer, i)
            for layer, items in spec.items()
            for i in ([items] if isinstance(items, int) else items)
        )
    else:
        pairs = spec
    for pair in pairs:
        try:
            layer, i = pair
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"{what}: give {{layer: [indices]}} or (layer, index) pairs, got {pair!r}"
            ) from None
        merged.setdefault(_index(layer, "layer"), set()).add(_index(i, what))
    return tuple((layer, tuple(sorted(s))) for layer, s in sorted(merged.items()) if s)


def _layer_factors(
    spec: Any, factor: float | None, what: str
) -> tuple[tuple[int, tuple[tuple[int, float], ...]], ...]:
    """``{layer: {i: f}}`` or ``{layer: [i]}`` with ``factor`` → sorted nested tuples."""
    merged: dict[int, dict[int, float]] = {}

    def scale(row: dict[int, float], i: int, f: float) -> None:
        # an index listed twice is scaled twice: the factors multiply
        row[i] = row.get(i, 1.0) * f

    if not isinstance(spec, Mapping):
        if factor is None:
            raise InvalidInputError(f"{what}: give {{layer: {{index: factor}}}} or factor=")
        f = _factor(factor, "factor")
        for pair in spec:
            try:
                layer, i = pair
            except (TypeError, ValueError):
                raise InvalidInputError(
                    f"{what}: give {{layer: [indices]}} or (layer, index) pairs, got {pair!r}"
                ) from None
            scale(merged.setdefault(_index(layer, "layer"), {}), _index(i, what), f)
        spec = {}
    for layer, items in spec.items():
        layer = _index(layer, "layer")
        row = merged.setdefault(layer, {})
        if isinstance(items, Mapping):
            if factor is not None:
                raise InvalidInputError(f"{what}: give factors per index or one factor=, not both")
            for i, f in items.items():
                scale(row, _index(i, what), _factor(f, f"factor of {what} {i} at layer {layer}"))
        else:
            if factor is None:
                raise InvalidInputError(f"{what}: give {{layer: {{index: factor}}}} or factor=")
            for i in [items] if isinstance(items, int) else items:
                scale(row, _index(i, what), _factor(factor, "factor"))
    return tuple(
        (layer, tuple(sorted(row.items()))) for layer, row in sorted(merged.items()) if row
    )


def _neuron_factors(
    spec: Any, factor: float | None
) -> tuple[tuple[tuple[int, int, int], float], ...]:
    out: dict[tuple[int, int, int], float] = {}
    if isinstance(spec, Mapping):
        if factor is not None:
            raise InvalidInputError("give factors per neuron or one factor=, not both")
        items: Iterable[tuple[Any, Any]] = spec.items()
    else:
        if factor is None:
            raise InvalidInputError("give {(layer, expert, neuron): factor} or factor=")
        items = ((key, factor) for key in spec)
    for key, f in items:
        try:
            layer, expert, neuron = key
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"neurons are (layer, expert, neuron) triples (expert 0 on dense layers), got {key!r}"
            ) from None
        triple = (_index(layer, "layer"), _index(expert, "expert"), _index(neuron, "neuron"))
        f = _factor(f, f"factor of neuron {triple}")
        out[triple] = out.get(triple, 1.0) * f
    return tuple(sorted(out.items()))


# ---------------------------------------------------------------------------------------
# range checks that name what is wrong


def _check_layer(model: Model, layer: int, what: str) -> None:
    n = model.dims.n_layers
    if layer >= n:
        raise InvalidInputError(
            f"{what}: layer {layer} is out of range; {model.name} has {n} layers (0–{n - 1})"
        )


def _check_moe_layer(model: Model, layer: int, what: str) -> None:
    _check_layer(model, layer, what)
    if model.layer_kind(layer) != "moe":
        raise InvalidInputError(
            f"{what} needs a router, but layer {layer} of {model.name} is dense (no experts to route)"
        )


def _check_expert(model: Model, layer: int, expert: int, what: str) -> None:
    n = model.dims.n_experts[layer]
    if expert >= n:
        kind = "experts" if model.layer_kind(layer) == "moe" else "expert (dense MLP: use expert 0)"
        raise InvalidInputError(
            f"{what}: expert {expert} at layer {layer} is out of range; layer {layer} has {n} {kind}"
        )


def _check_head(model: Model, layer: int, head: int, what: str) -> None:
    n = model.dims.n_heads
    if head >= n:
        raise InvalidInputError(
            f"{what}: head {head} at layer {layer} is out of range; layers have {n} heads (0–{n - 1})"
        )


def _real_rows(ctx: EditContext) -> Tensor:
    """``(batch·seq,)`` bool: True on real tokens, False on padding."""
    return ctx.batch.attention_mask.reshape(-1).to(torch.bool)


# ---------------------------------------------------------------------------------------
# base class and plan


class Intervention:
    """Base of every intervention value: composition and the :class:`Edit` protocol."""

    sites: ClassVar[frozenset[str]] = frozenset()
    #: what the value reads besides its sites' values (see :class:`~mechmoe.core.edits.Edit`)
    needs: ClassVar[frozenset[str]] = frozenset()

    def validate(self, model: Model) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def apply(self, site: str, layer: int, value: Any, ctx: EditContext) -> Any:  # pragma: no cover
        raise NotImplementedError

    def layers(self) -> tuple[int, ...]:
        """The layers this value touches (``()`` for 'every MoE layer' in :class:`SetTopK`)."""
        return ()

    def is_empty(self) -> bool:
        """True when applying this value changes nothing."""
        return False

    @property
    def edits(self) -> tuple[Any, ...]:
        """What a capture pass runs for this value alone: a one-item :class:`Plan`."""
        return Plan((self,)).edits

    def __add__(self, other: Any) -> Plan:
        return compose(self, other)

    def __radd__(self, other: Any) -> Plan:
        # sum([a, b, c]) starts from 0
        if isinstance(other, int) and other == 0:
            return compose(self)
        return compose(other, self)


@dataclass(frozen=True)
class MaskHeads(Intervention):
    """Replace attention heads' slices of the output projection's input.

    Parameters
    ----------
    heads
        ``{layer: [head, …]}`` or an iterable of ``(layer, head)`` pairs.
    mode
        ``"zero"``: the slices become 0 (the same as zeroing the heads' columns of W_O).
        ``"mean"``: they become a mean activation: ``means`` where given, otherwise each
        head's mean over the real (non-pad) tokens of the batch being run, computed in
        the same pass (after any edits at earlier layers).
    means
        Optional ``{layer: array (n_heads, head_dim)}`` of fixed means (e.g. from
        :func:`head_means` over a reference set); only the masked heads' rows are used.

    Examples
    --------
    >>> MaskHeads({3: [5], 7: [1]})
    MaskHeads({3: [5], 7: [1]}, mode='zero')
    """

    heads: Any
    # ``MaskMode`` values; typed ``str`` so a wrong mode reaches the check in
    # ``__post_init__`` (one InvalidInputError) under runtime type checkers too
    mode: str = "zero"
    means: Any = field(default=None, compare=True)
    sites: ClassVar[frozenset[str]] = frozenset({"heads"})

    def __post_init__(self) -> None:
        if self.mode not in ("zero", "mean"):
            raise InvalidInputError(f"MaskHeads mode must be 'zero' or 'mean', got {self.mode!r}")
        object.__setattr__(self, "heads", _layer_sets(self.heads, "head"))
        if self.means is not None:
            if self.mode != "mean":
                raise InvalidInputError("MaskHeads: means= only applies with mode='mean'")
            fixed = {}
            for layer, arr in dict(self.means).items():
                t = torch.as_tensor(arr, dtype=torch.float64).detach().cpu()
                if t.ndim != 2:
                    raise InvalidInputError(
                        f"MaskHeads: means of layer {layer} must be (n_heads, head_dim), got shape {tuple(t.shape)}"
                    )
                fixed[_index(layer, "layer")] = tuple(tuple(row) for row in t.tolist())
            object.__setattr__(self, "means", tuple(sorted(fixed.items())))

    def __repr__(self) -> str:
        heads = ", ".join(f"{layer}: {list(h)}" for layer, h in self.heads)
        extra = ", means=…" if self.means is not None else ""
        return f"MaskHeads({{{heads}}}, mode={self.mode!r}{extra})"

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """The masked heads as ``(layer, head)`` pairs."""
        return tuple((layer, h) for layer, hs in self.heads for h in hs)

    def layers(self) -> tuple[int, ...]:
        return tuple(layer for layer, _ in self.heads)

    def is_empty(self) -> bool:
        return not self.heads

    def validate(self, model: Model) -> None:
        for layer, hs in self.heads:
            _check_layer(model, layer, "MaskHeads")
            for h in hs:
                _check_head(model, layer, h, "MaskHeads")
        if self.means is not None:
            fixed = dict(self.means)
            shape = (model.dims.n_heads, model.dims.head_dim)
            for layer, _ in self.heads:
                if layer not in fixed:
                    raise InvalidInputError(f"MaskHeads: means= has no entry for layer {layer}")
                got = (len(fixed[layer]), len(fixed[layer][0]) if fixed[layer] else 0)
                if got != shape:
                    raise InvalidInputError(
                        f"MaskHeads: means of layer {layer} have shape {got}; the model needs {shape}"
                    )

    def apply(self, site: str, layer: int, value: Tensor, ctx: EditContext) -> Tensor | None:
        heads = dict(self.heads).get(layer)
        if not heads:
            return None
        idx = torch.tensor(heads, device=value.device)
        out = value.clone()
        if self.mode == "zero":
            out[:, :, idx] = 0
            return out
        if self.means is not None:
            mean = torch.tensor(dict(self.means)[layer], dtype=value.dtype, device=value.device)[
                idx
            ]
        else:
            real = ctx.batch.attention_mask.to(device=value.device, dtype=torch.bool)[
                :, :, None, None
            ]
            sel = value[:, :, idx]
            # where() rather than a product, so NaN or inf on pad rows cannot leak into the mean
            total = torch.where(real, sel, torch.zeros((), dtype=sel.dtype, device=sel.device)).sum(
                (0, 1)
            )
            count = real.sum().clamp_min(1).to(sel.dtype)
            mean = total / count
        out[:, :, idx] = mean
        return out


# ---- routing ---------------------------------------------------------------------------


@dataclass
class _Routing:
    """The merged routing request at one layer during one pass."""

    logits: Tensor
    weights: Tensor
    index: Tensor
    banned: set[int] = field(default_factory=set)
    forced: set[int] = field(default_factory=set)
    k: int | None = None
    scales: dict[int, float] = field(default_factory=dict)

    def derive(self, layer: int, renormalize: bool) -> tuple[Tensor, Tensor, Tensor]:
        E = self.logits.shape[-1]
        if not (self.banned or self.forced or self.k is not None):
            weights, index = self.weights, self.index
        else:
            k = self.k if self.k is not None else self.index.shape[-1]
            _check_routing(layer, E, k, self.banned, self.forced)
            z = self.logits.float()
            if self.banned:
                ban = torch.zeros(E, dtype=torch.bool, device=z.device)
                ban[list(self.banned)] = True
                z = z.masked_fill(ban, float("-inf"))
            probs = torch.softmax(z, dim=-1)
            score = probs
            if self.forced:
                force = torch.zeros(E, dtype=torch.bool, device=z.device)
                force[list(self.forced)] = True
                score = probs.masked_fill(force, 2.0)  # probabilities are ≤ 1: forced win
            _, index = torch.topk(score, k, dim=-1)
            weights = probs.gather(-1, index)
            if renormalize:
                weights = weights / weights.sum(dim=-1, keepdim=True)
            weights = weights.to(self.weights.dtype)
        if self.scales:
            factor = torch.ones(E, dtype=weights.dtype, device=weights.device)
            for e, f in self.scales.items():
                factor[e] = f
            weights = weights * factor[index]
        return self.logits, weights, index


def _check_routing(layer: int, n_experts: int, k: int, banned: set[int], forced: set[int]) -> None:
    both = sorted(banned & forced)
    if both:
        raise InvalidInputError(
            f"contradictory routing at layer {layer}: expert {both[0]} is both banned and forced"
        )
    if k > n_experts:
        raise InvalidInputError(
            f"SetTopK: k={k} at layer {layer} is out of range; the layer has {n_experts} experts"
        )
    if len(forced) > k:
        raise InvalidInputError(
            f"contradictory routing at layer {layer}: {len(forced)} experts forced but top-k is {k}; "
            "add SetTopK(k) with k ≥ the number forced"
        )
    if n_experts - len(banned) < k:
        raise InvalidInputError(
            f"contradictory routing at layer {layer}: {len(banned)} of {n_experts} experts banned "
            f"leaves fewer than top-k={k}"
        )


class _RoutingEdit(Intervention):
    """Shared machinery: merge this value's request into the layer's routing, re-derive."""

    sites: ClassVar[frozenset[str]] = frozenset({"router"})

    def _contribute(self, layer: int, routing: _Routing) -> bool:  # pragma: no cover
        raise NotImplementedError

    def apply(self, site: str, layer: int, value: RouterOutput, ctx: EditContext) -> Any:
        # A plan merges all its routing values into one _RoutingGroup, so each layer's
        # routing is derived once per pass from the router's own output.
        routing = _Routing(value.logits, value.weights, value.index)
        if not self._contribute(layer, routing):
            return None
        return RouterOutput(*routing.derive(layer, ctx.model.renormalizes()))


class _RoutingGroup(_RoutingEdit):
    """All routing values of a plan, merged into one decision per layer (order-free)."""

    def __init__(self, items: tuple[_RoutingEdit, ...]) -> None:
        self.items = items

    def __repr__(self) -> str:
        return " + ".join(repr(it) for it in self.items)

    def validate(self, model: Model) -> None:
        return None  # the plan's check has validated the items and their combination

    def _contribute(self, layer: int, routing: _Routing) -> bool:
        changed = [it._contribute(layer, routing) for it in self.items]
        return any(changed)


def _check_expert_sets(model: Model, sets: Iterable[tuple[int, Iterable[int]]], what: str) -> None:
    for layer, experts in sets:
        _check_moe_layer(model, layer, what)
        for e in experts:
            _check_expert(model, layer, e, what)


@dataclass(frozen=True, repr=False)
class _ExpertSetEdit(_RoutingEdit):
    """Routing values that add ``{layer: [expert, …]}`` to one set of the routing decision."""

    experts: Any
    _bucket: ClassVar[str] = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "experts", _layer_sets(self.experts, "expert"))

    def __repr__(self) -> str:
        body = ", ".join(f"{la}: {list(e)}" for la, e in self.experts)
        return f"{type(self).__name__}({{{body}}})"

    def layers(self) -> tuple[int, ...]:
        return tuple(layer for layer, _ in self.experts)

    def is_empty(self) -> bool:
        return not self.experts

    def validate(self, model: Model) -> None:
        _check_expert_sets(model, self.experts, type(self).__name__)

    def _contribute(self, layer: int, routing: _Routing) -> bool:
        experts = dict(self.experts).get(layer)
        if not experts:
            return False
        getattr(routing, self._bucket).update(experts)
        return True


@dataclass(frozen=True, repr=False)
class BanExperts(_ExpertSetEdit):
    """Take experts out of routing: their router logit becomes −∞ and routing is re-derived.

    ``experts`` is ``{layer: [expert, …]}`` or ``(layer, expert)`` pairs. Gates come from the
    softmax over the experts left, then top-k, renormalised only where the model
    renormalises.
    """

    _bucket: ClassVar[str] = "banned"


@dataclass(frozen=True, repr=False)
class ForceExperts(_ExpertSetEdit):
    """Make experts always take a top-k slot at their layer.

    ``experts`` is ``{layer: [expert, …]}`` or ``(layer, expert)`` pairs. The other slots go
    to the most probable remaining experts; every gate is the expert's softmax probability
    over the router logits (fp32), renormalised over the chosen experts only where the
    model renormalises. Forcing more experts than top-k needs a :class:`SetTopK` in the
    same plan.
    """

    _bucket: ClassVar[str] = "forced"


@dataclass(frozen=True, repr=False)
class SetTopK(_RoutingEdit):
    """Route every token to ``k`` experts by the model's own rule.

    ``layers=None`` means every MoE layer. With ``k`` = the number of experts and a
    renormalising model, the block computes the full soft mixture.
    """

    k: int
    only: tuple[int, ...] | None = None

    def __init__(self, k: int, layers: Iterable[int] | None = None) -> None:
        object.__setattr__(self, "k", _index(k, "top-k"))
        if self.k < 1:
            raise InvalidInputError("SetTopK: k must be at least 1")
        only = None if layers is None else tuple(sorted({_index(la, "layer") for la in layers}))
        object.__setattr__(self, "only", only)

    def __repr__(self) -> str:
        return (
            f"SetTopK({self.k})"
            if self.only is None
            else f"SetTopK({self.k}, layers={list(self.only)})"
        )

    def layers(self) -> tuple[int, ...]:
        return self.only or ()

    def targets(self, model: Model) -> tuple[int, ...]:
        """The MoE layers this value applies to on ``model``."""
        if self.only is not None:
            return self.only
        return tuple(la for la in range(model.dims.n_layers) if model.layer_kind(la) == "moe")

    def validate(self, model: Model) -> None:
        layers = self.targets(model)
        if not layers:
            raise InvalidInputError(f"SetTopK needs a router, but {model.name} has no MoE layer")
        for layer in layers:
            _check_moe_layer(model, layer, "SetTopK")
            if self.k > model.dims.n_experts[layer]:
                raise InvalidInputError(
                    f"SetTopK: k={self.k} at layer {layer} is out of range; "
                    f"the layer has {model.dims.n_experts[layer]} experts"
                )

    def _contribute(self, layer: int, routing: _Routing) -> bool:
        if self.only is not None and layer not in self.only:
            return False
        if routing.k is not None and routing.k != self.k:
            raise InvalidInputError(
                f"contradictory routing at layer {layer}: top-k set to both {routing.k} and {self.k}"
            )
        routing.k = self.k
        return True


@dataclass(frozen=True, repr=False)
class ScaleGates(_RoutingEdit):
    """Multiply experts' gates (where they are chosen) by a factor; routing is unchanged.

    ``gates`` is ``{layer: {expert: factor}}``, or ``{layer: [expert, …]}`` / pairs with
    ``factor=``. The other gates are *not* renormalised, so this is the same as scaling
    the expert's output weights.
    """

    gates: Any
    factor: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "gates", _layer_factors(self.gates, self.factor, "expert"))
        object.__setattr__(self, "factor", None)

    def __repr__(self) -> str:
        body = ", ".join(f"{la}: {dict(row)}" for la, row in self.gates)
        return f"{type(self).__name__}({{{body}}})"

    def layers(self) -> tuple[int, ...]:
        return tuple(layer for layer, _ in self.gates)

    def is_empty(self) -> bool:
        return all(f == 1.0 for _, row in self.gates for _, f in row)

    def validate(self, model: Model) -> None:
        _check_expert_sets(
            model, ((la, [e for e, _ in row]) for la, row in self.gates), type(self).__name__
        )

    def _contribute(self, layer: int, routing: _Routing) -> bool:
        row = dict(self.gates).get(layer)
        if not row:
            return False
        for e, f in row:
            routing.scales[e] = routing.scales.get(e, 1.0) * f
        return True


class ZeroExperts(ScaleGates):
    """Silence experts: they keep their routing slot but add nothing (gate × 0).

    ``experts`` is ``{layer: [expert, …]}`` or ``(layer, expert)`` pairs.
    """

    def __init__(self, experts: Any) -> None:
        super().__init__(experts, factor=0.0)

    def __repr__(self) -> str:
        return f"ZeroExperts({{{', '.join(f'{la}: {[e for e, _ in row]}' for la, row in self.gates)}}})"

    def is_empty(self) -> bool:
        return not self.gates


# ---- neurons ---------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ScaleNeurons(Intervention):
    """Multiply FFN neurons' activations by a factor.

    ``neurons`` is ``{(layer, expert, neuron): factor}``, or an iterable of triples with
    ``factor=``. On a dense layer the MLP is expert 0. On an MoE layer a neuron changes
    only where its expert is chosen; the change is its gate × activation × (factor − 1)
    along its ``down_proj`` column (the same as scaling that column).
    """

    neurons: Any
    factor: float | None = None
    sites: ClassVar[frozenset[str]] = frozenset({"experts_out", "ffn_out"})
    needs: ClassVar[frozenset[str]] = frozenset({"ffn_in", "routing"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "neurons", _neuron_factors(self.neurons, self.factor))
        object.__setattr__(self, "factor", None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.neurons)})"

    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({la for (la, _, _), _ in self.neurons}))

    def is_empty(self) -> bool:
        return all(f == 1.0 for _, f in self.neurons)

    def validate(self, model: Model) -> None:
        name = type(self).__name__
        for (layer, expert, neuron), _ in self.neurons:
            _check_layer(model, layer, name)
            _check_expert(model, layer, expert, name)
            n = model.dims.d_ffn[layer]
            if neuron >= n:
                raise InvalidInputError(
                    f"{name}: neuron {neuron} of expert {expert} at layer {layer} is out of range; "
                    f"it has {n} neurons"
                )

    def _groups(self, layer: int) -> dict[int, tuple[list[int], list[float]]]:
        groups: dict[int, tuple[list[int], list[float]]] = {}
        for (la, expert, neuron), f in self.neurons:
            if la == layer and f != 1.0:
                ns, fs = groups.setdefault(expert, ([], []))
                ns.append(neuron)
                fs.append(f)
        return groups

    def apply(self, site: str, layer: int, value: Tensor, ctx: EditContext) -> Tensor | None:
        model = ctx.model
        moe = model.layer_kind(layer) == "moe"
        if (site == "experts_out") != moe:
            return None  # MoE layers are edited at experts_out, dense ones at ffn_out
        groups = self._groups(layer)
        if not groups:
            return None
        shape = value.shape
        out = value.reshape(-1, shape[-1]).clone()
        x = ctx.ffn_in(layer)
        w = model.ffn_weights(layer)
        real = _real_rows(ctx).to(x.device)
        for expert, (neurons, factors) in groups.items():
            if moe:
                routing = ctx.routing(layer)
                gates, index = routing.weights, routing.index
                rows, slots = torch.nonzero((index == expert) & real[:, None], as_tuple=True)
                gate = gates[rows, slots].to(x.dtype)[:, None]
            else:
                rows = torch.nonzero(real, as_tuple=True)[0]
                gate = None
            if rows.numel() == 0:
                continue
            n_idx = torch.tensor(neurons, device=x.device)
            f = torch.tensor(factors, dtype=x.dtype, device=x.device)
            acts = w.activations(x[rows], expert)[:, n_idx]
            delta = (acts * (f - 1.0)) @ w.w_down[expert][:, n_idx].T
            if gate is not None:
                delta = delta * gate
            out.index_add_(0, rows, delta.to(out.dtype))
        return out.reshape(shape)


class ZeroNeurons(ScaleNeurons):
    """Silence FFN neurons: ``ScaleNeurons`` by 0. ``neurons`` are (layer, expert, neuron) triples."""

    def __init__(self, neurons: Any) -> None:
        super().__init__(neurons, factor=0.0)

    def __repr__(self) -> str:
        return f"ZeroNeurons({[t for t, _ in self.neurons]})"

    def is_empty(self) -> bool:
        return not self.neurons


def _merge_neurons(values: Sequence[ScaleNeurons]) -> ScaleNeurons:
    """One :class:`ScaleNeurons` equal to applying ``values`` one after the other."""
    if len(values) == 1:
        return values[0]
    product: dict[tuple[int, int, int], float] = {}
    for value in values:
        for triple, f in value.neurons:
            product[triple] = product.get(triple, 1.0) * f
    return ScaleNeurons(product)


# ---- plans -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlanCheck:
    """The first edit of a plan: validates the whole combination before the pass."""

    plan: Plan
    sites: frozenset[str] = frozenset()
    needs: frozenset[str] = frozenset()

    def validate(self, model: Model) -> None:
        self.plan.validate(model)

    def apply(self, site: str, layer: int, value: Any, ctx: EditContext) -> None:
        return None


@dataclass(frozen=True)
class Plan:
    """An ordered, immutable combination of interventions.

    Build it with ``a + b``, :func:`compose` or ``Plan((a, b))``. Anything that takes
    ``interventions=`` accepts a plan; its :attr:`edits` start with a check that runs the
    combination's validation before the forward pass.

    Examples
    --------
    >>> from mechmoe.core.interventions import BanExperts, ForceExperts
    >>> BanExperts({0: [1]}) + ForceExperts({0: [1]})
    Traceback (most recent call last):
    ...
    mechmoe.core.errors.InvalidInputError: contradictory routing at layer 0: expert 1 is both banned and forced
    """

    items: tuple[Intervention, ...] = ()

    def __post_init__(self) -> None:
        items = tuple(self.items)
        for it in items:
            if not isinstance(it, Intervention):
                raise InvalidInputError(f"not an intervention: {it!r}")
        object.__setattr__(self, "items", items)
        self._check_static()

    # -- container --
    def __iter__(self) -> Iterator[Intervention]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __add__(self, other: Any) -> Plan:
        return compose(self, other)

    def __radd__(self, other: Any) -> Plan:
        if isinstance(other, int) and other == 0:
            return self
        return compose(other, self)

    def __repr__(self) -> str:
        return " + ".join(repr(it) for it in self.items) if self.items else "Plan(())"

    def is_empty(self) -> bool:
        return all(it.is_empty() for it in self.items)

    @property
    def edits(self) -> tuple[Any, ...]:
        """What a capture pass runs: the plan's check, the head and neuron values, and
        the routing values merged into one routing decision per layer."""
        routing = tuple(it for it in self.items if isinstance(it, _RoutingEdit))
        neurons = tuple(it for it in self.items if isinstance(it, ScaleNeurons))
        rest = tuple(it for it in self.items if not isinstance(it, (_RoutingEdit, ScaleNeurons)))
        group = (_RoutingGroup(routing),) if routing else ()
        # Each neuron value adds its change to the unedited activation, so two values on
        # one neuron must be merged first: their factors multiply (applied one after the
        # other), and the merged value is applied once.
        merged = (_merge_neurons(neurons),) if neurons else ()
        return (_PlanCheck(self), *rest, *merged, *group)

    # A plan is itself an Edit, so it fits wherever one edit is accepted; backends
    # normally unpack it through ``edits`` instead.
    @property
    def sites(self) -> frozenset[str]:
        return frozenset().union(*(it.sites for it in self.items))

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(it.needs for it in self.items))

    def apply(self, site: str, layer: int, value: Any, ctx: EditContext) -> Any:
        changed = False
        for edit in self.edits:
            if site in edit.sites:
                new = edit.apply(site, layer, value, ctx)
                if new is not None:
                    value, changed = new, True
        return value if changed else None

    # -- checks --
    def _check_static(self) -> None:
        """Contradictions visible without a model."""
        banned: dict[int, set[int]] = {}
        forced: dict[int, set[int]] = {}
        ks: dict[int | None, int] = {}
        modes: dict[tuple[int, int], str] = {}
        means: dict[tuple[int, int], Any] = {}
        for it in self.items:
            if isinstance(it, BanExperts):
                for la, es in it.experts:
                    banned.setdefault(la, set()).update(es)
            elif isinstance(it, ForceExperts):
                for la, es in it.experts:
                    forced.setdefault(la, set()).update(es)
            elif isinstance(it, SetTopK):
                for la in it.only if it.only is not None else (None,):
                    if ks.setdefault(la, it.k) != it.k:
                        where = "every MoE layer" if la is None else f"layer {la}"
                        raise InvalidInputError(
                            f"contradictory routing at {where}: top-k set to both {ks[la]} and {it.k}"
                        )
            elif isinstance(it, MaskHeads):
                fixed = dict(it.means) if it.means is not None else {}
                for pair in it.pairs:
                    if modes.setdefault(pair, it.mode) != it.mode:
                        raise InvalidInputError(
                            f"contradictory masks: head {pair[1]} at layer {pair[0]} is masked "
                            f"with both mode='{modes[pair]}' and mode='{it.mode}'"
                        )
                    row = fixed.get(pair[0])
                    mean = None if row is None or pair[1] >= len(row) else row[pair[1]]
                    if means.setdefault(pair, mean) != mean:
                        raise InvalidInputError(
                            f"contradictory masks: head {pair[1]} at layer {pair[0]} is "
                            "mean-masked with two different means; give one MaskHeads per head"
                        )
        for la in sorted(banned.keys() & forced.keys()):
            both = sorted(banned[la] & forced[la])
            if both:
                raise InvalidInputError(
                    f"contradictory routing at layer {la}: expert {both[0]} is both banned and forced"
                )

    def validate(self, model: Model) -> None:
        """Check every item and the combination against ``model`` (no forward pass)."""
        for it in self.items:
            it.validate(model)
        banned: dict[int, set[int]] = {}
        forced: dict[int, set[int]] = {}
        ks: dict[int, int] = {}
        for it in self.items:
            if isinstance(it, BanExperts):
                for la, es in it.experts:
                    banned.setdefault(la, set()).update(es)
            elif isinstance(it, ForceExperts):
                for la, es in it.experts:
                    forced.setdefault(la, set()).update(es)
            elif isinstance(it, SetTopK):
                for la in it.targets(model):
                    if ks.setdefault(la, it.k) != it.k:
                        raise InvalidInputError(
                            f"contradictory routing at layer {la}: top-k set to both {ks[la]} and {it.k}"
                        )
        for la in sorted(banned.keys() | forced.keys() | ks.keys()):
            k = ks.get(la, model.dims.top_k[la])
            _check_routing(
                la, model.dims.n_experts[la], k, banned.get(la, set()), forced.get(la, set())
            )


def compose(*interventions: Any) -> Plan:
    """One :class:`Plan` from interventions, plans, lists of them or ``None``s, in order."""
    flat: list[Intervention] = []

    def walk(x: Any) -> None:
        if x is None:
            return
        if isinstance(x, Plan):
            flat.extend(x.items)
        elif isinstance(x, Intervention):
            flat.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        else:
            raise InvalidInputError(
                f"cannot compose {type(x).__name__}: expected an intervention, a plan or a list of them"
            )

    for x in interventions:
        walk(x)
    return Plan(tuple(flat))


def as_edits(interventions: Any) -> list[Edit]:
    """Normalise ``None`` / one edit / a plan / a list to the flat list a pass runs.

    mechmoe's own interventions in a list are composed into one plan first, so a list
    means the same as ``a + b + …`` (routing values at one layer merge into one routing
    decision, and the combination is validated as a whole). Third-party edits run after
    them, in list order.
    """
    if interventions is None:
        return []
    if isinstance(interventions, (Intervention, Plan)):
        return list(interventions.edits)
    if hasattr(interventions, "edits") and not isinstance(interventions, (str, bytes, dict)):
        return list(interventions.edits)  # another composed plan type
    if isinstance(interventions, Edit):
        return [interventions]
    if isinstance(interventions, (str, bytes, dict)) or not hasattr(interventions, "__iter__"):
        raise InvalidTypeError(
            f"interventions= got a {type(interventions).__name__}: pass an intervention "
            "(e.g. ZeroExperts([(3, 12)])), a plan, or a list of them"
        )
    items = list(interventions)
    ours = [x for x in items if isinstance(x, (Intervention, Plan))]
    out: list[Edit] = as_edits(compose(*ours)) if ours else []
    for item in items:
        if not isinstance(item, (Intervention, Plan)):
            out.extend(as_edits(item))
    return out


__all__ = [
    "BanExperts",
    "ForceExperts",
    "Intervention",
    "MaskHeads",
    "MaskMode",
    "Plan",
    "ScaleGates",
    "ScaleNeurons",
    "SetTopK",
    "ZeroExperts",
    "ZeroNeurons",
    "compose",
    "as_edits",
]
