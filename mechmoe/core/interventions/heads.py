"""Head masking: replace attention heads' slices of the output projection's input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from mechmoe._types import MaskMode
from mechmoe.core.checks import check_choice
from mechmoe.core.edits import Site
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.interventions.checks import check_head, check_layer
from mechmoe.core.interventions.normalise import (
    LayerSets,
    LayerSetsInput,
    MeansInput,
    MeanTable,
    init_fields,
    layer_sets,
    mean_table,
)
from mechmoe.core.interventions.plan import Intervention

if TYPE_CHECKING:
    from mechmoe.core.edits import EditContext
    from mechmoe.core.types import ModelView


@dataclass(frozen=True, init=False)
class MaskHeads(Intervention, family=True):
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
        :func:`~mechmoe.ops.interventions.head_means` over a reference set); only the
        masked heads' rows are used.

    Examples
    --------
    >>> MaskHeads({3: [5], 7: [1]})
    MaskHeads({3: [5], 7: [1]}, mode='zero')
    """

    heads: LayerSets
    mode: MaskMode
    means: MeanTable | None
    sites: ClassVar[frozenset[Site]] = frozenset({"heads"})

    # ``mode`` is typed ``str`` so that a wrong mode reaches the check below (one
    # InvalidInputError) under runtime type checkers too
    def __init__(
        self, heads: LayerSetsInput, mode: str = "zero", means: MeansInput | None = None
    ) -> None:
        mode = check_choice(mode, MaskMode, name="mode", where="MaskHeads")
        if means is not None and mode != "mean":
            raise InvalidInputError("MaskHeads: means= only applies with mode='mean'")
        init_fields(
            self,
            heads=layer_sets(heads, "head"),
            mode=mode,
            means=None if means is None else mean_table(means, "MaskHeads"),
        )

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

    def mean_of(self, layer: int, head: int) -> tuple[float, ...] | None:
        """The fixed mean this value puts in ``head`` at ``layer`` (``None``: none given)."""
        row = dict(self.means or ()).get(layer)
        return None if row is None or head >= len(row) else row[head]

    def validate(self, model: ModelView) -> None:
        for layer, hs in self.heads:
            check_layer(model, layer, "MaskHeads")
            for h in hs:
                check_head(model, layer, h, "MaskHeads")
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

    @classmethod
    def check_combination(cls, values: Sequence[MaskHeads], model: ModelView | None) -> None:
        """One head masked two ways (zero and mean, or two different means) is refused:
        applied in sequence, only one would count."""
        modes: dict[tuple[int, int], str] = {}
        means: dict[tuple[int, int], tuple[float, ...] | None] = {}
        for it in values:
            for pair in it.pairs:
                if modes.setdefault(pair, it.mode) != it.mode:
                    raise InvalidInputError(
                        f"contradictory masks: head {pair[1]} at layer {pair[0]} is masked "
                        f"with both mode='{modes[pair]}' and mode='{it.mode}'"
                    )
                mean = it.mean_of(*pair)
                if means.setdefault(pair, mean) != mean:
                    raise InvalidInputError(
                        f"contradictory masks: head {pair[1]} at layer {pair[0]} is "
                        "mean-masked with two different means; give one MaskHeads per head"
                    )

    def apply(self, site: Site, layer: int, value: Tensor, ctx: EditContext) -> Tensor | None:
        heads = dict(self.heads).get(layer)
        if not heads:
            return None
        idx = torch.tensor(heads, device=value.device)
        out = value.clone()
        if self.mode == "zero":
            out[:, :, idx] = 0
            return out
        if self.means is not None:
            table = torch.tensor(dict(self.means)[layer], dtype=value.dtype, device=value.device)
            mean = table[idx]
        else:
            real = ctx.batch.attention_mask.to(device=value.device, dtype=torch.bool)
            real = real[:, :, None, None]
            sel = value[:, :, idx]
            # where() rather than a product, so NaN or inf on pad rows cannot leak into the mean
            zero = torch.zeros((), dtype=sel.dtype, device=sel.device)
            total = torch.where(real, sel, zero).sum((0, 1))
            count = real.sum().clamp_min(1).to(sel.dtype)
            mean = total / count
        out[:, :, idx] = mean
        return out


__all__ = ["MaskHeads", "MaskMode"]
