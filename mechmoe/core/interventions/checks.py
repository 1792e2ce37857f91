"""Range checks against a model that name what is out of range, and how to read it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechmoe.core.errors import InvalidInputError

if TYPE_CHECKING:
    from mechmoe.core.edits import EditContext
    from mechmoe.core.types import ModelView


def moe_layers(model: ModelView) -> tuple[int, ...]:
    """The layers of ``model`` that have a router."""
    return tuple(la for la in range(model.dims.n_layers) if model.layer_kind(la) == "moe")


def check_layer(model: ModelView, layer: int, what: str) -> None:
    n = model.dims.n_layers
    if layer >= n:
        raise InvalidInputError(
            f"{what}: layer {layer} is out of range; {model.name} has {n} layers (0–{n - 1})"
        )


def check_moe_layer(model: ModelView, layer: int, what: str) -> None:
    check_layer(model, layer, what)
    if model.layer_kind(layer) != "moe":
        raise InvalidInputError(
            f"{what} needs a router, but layer {layer} of {model.name} is dense (no experts to route)"
        )


def check_expert(model: ModelView, layer: int, expert: int, what: str) -> None:
    n = model.dims.n_experts[layer]
    if expert >= n:
        kind = "experts" if model.layer_kind(layer) == "moe" else "expert (dense MLP: use expert 0)"
        raise InvalidInputError(
            f"{what}: expert {expert} at layer {layer} is out of range; layer {layer} has {n} {kind}"
        )


def check_head(model: ModelView, layer: int, head: int, what: str) -> None:
    n = model.dims.n_heads
    if head >= n:
        raise InvalidInputError(
            f"{what}: head {head} at layer {layer} is out of range; layers have {n} heads (0–{n - 1})"
        )


def real_rows(ctx: EditContext) -> Tensor:
    """``(batch·seq,)`` bool: True on real tokens, False on padding."""
    return ctx.batch.attention_mask.reshape(-1).to(torch.bool)


__all__ = [
    "check_expert",
    "check_head",
    "check_layer",
    "check_moe_layer",
    "moe_layers",
    "real_rows",
]
