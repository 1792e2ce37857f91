"""Neuron scaling: multiply FFN neurons' activations (on MoE layers, where their expert is chosen)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, SupportsFloat

import torch
from torch import Tensor

from mechmoe.core.edits import Need, Site
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.interventions.checks import check_expert, check_layer, real_rows
from mechmoe.core.interventions.normalise import (
    NeuronFactors,
    NeuronFactorsInput,
    init_fields,
    neuron_factors,
)
from mechmoe.core.interventions.plan import Intervention

if TYPE_CHECKING:
    from mechmoe.core.edits import EditContext
    from mechmoe.core.types import ModelView


@dataclass(frozen=True, init=False, repr=False)
class ScaleNeurons(Intervention, family=True):
    """Multiply FFN neurons' activations by a factor.

    ``neurons`` is ``{(layer, expert, neuron): factor}``, or an iterable of triples with
    ``factor=``. On a dense layer the MLP is expert 0. On an MoE layer a neuron changes
    only where its expert is chosen; the change is its gate × activation × (factor − 1)
    along its ``down_proj`` column (the same as scaling that column).

    In a plan the neuron values merge into one value whose factors are the products of
    theirs (applying one after the other), run once.
    """

    neurons: NeuronFactors
    sites: ClassVar[frozenset[Site]] = frozenset({"experts_out", "ffn_out"})
    needs: ClassVar[frozenset[Need]] = frozenset({"ffn_in", "routing"})

    def __init__(self, neurons: NeuronFactorsInput, factor: SupportsFloat | None = None) -> None:
        init_fields(self, neurons=neuron_factors(neurons, factor))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.neurons)})"

    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({la for (la, _, _), _ in self.neurons}))

    def is_empty(self) -> bool:
        return all(f == 1.0 for _, f in self.neurons)

    def validate(self, model: ModelView) -> None:
        name = type(self).__name__
        for (layer, expert, neuron), _ in self.neurons:
            check_layer(model, layer, name)
            check_expert(model, layer, expert, name)
            n = model.dims.d_ffn[layer]
            if neuron >= n:
                raise InvalidInputError(
                    f"{name}: neuron {neuron} of expert {expert} at layer {layer} is out of range; "
                    f"it has {n} neurons"
                )

    @classmethod
    def merged(cls, values: Sequence[ScaleNeurons]) -> ScaleNeurons:
        """One value equal to applying ``values`` one after the other.

        Each neuron value adds its change to the unedited activation, so two values on one
        neuron must be merged first: their factors multiply, and the product runs once.
        """
        if len(values) == 1:
            return values[0]
        product: dict[tuple[int, int, int], float] = {}
        for value in values:
            for triple, f in value.neurons:
                product[triple] = product.get(triple, 1.0) * f
        return ScaleNeurons(product)

    def _groups(self, layer: int) -> dict[int, tuple[list[int], list[float]]]:
        groups: dict[int, tuple[list[int], list[float]]] = {}
        for (la, expert, neuron), f in self.neurons:
            if la == layer and f != 1.0:
                ns, fs = groups.setdefault(expert, ([], []))
                ns.append(neuron)
                fs.append(f)
        return groups

    def apply(self, site: Site, layer: int, value: Tensor, ctx: EditContext) -> Tensor | None:
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
        real = real_rows(ctx).to(x.device)
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

    def __init__(self, neurons: NeuronFactorsInput) -> None:
        super().__init__(neurons, factor=0.0)

    def __repr__(self) -> str:
        return f"ZeroNeurons({[t for t, _ in self.neurons]})"

    def is_empty(self) -> bool:
        return not self.neurons


__all__ = ["ScaleNeurons", "ZeroNeurons"]
