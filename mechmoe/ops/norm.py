"""Norms computed from :class:`~mechmoe.model.NormParams`, live or frozen.

``apply_norm`` reproduces the model's norm from the spec (so conformance can check the
spec's kind and eps). ``frozen_scale`` returns the statistics of an actual input, and
``apply_frozen`` applies the norm with those statistics held fixed, which makes it
affine in its input (method.md, "Frozen final norm").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from mechmoe.core.types import NormParams


@dataclass(frozen=True)
class FrozenStats:
    """Per-row statistics of the actual input: ``mean`` (0 for RMSNorm) and ``sigma``."""

    mean: Float[Tensor, "*rows 1"]
    sigma: Float[Tensor, "*rows 1"]


def frozen_stats(params: NormParams, x: Float[Tensor, "*rows d"]) -> FrozenStats:
    """The normaliser of ``params`` evaluated at ``x`` (fp32)."""
    x = x.float()
    if params.kind == "rmsnorm":
        return FrozenStats(
            mean=torch.zeros_like(x[..., :1]),
            sigma=torch.sqrt(x.pow(2).mean(-1, keepdim=True) + params.eps),
        )
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return FrozenStats(mean=mean, sigma=torch.sqrt(var + params.eps))


def apply_frozen(
    params: NormParams,
    x: Float[Tensor, "*rows d"],
    stats: FrozenStats,
    *,
    center: bool = True,
    shift: bool = True,
) -> Float[Tensor, "*rows d"]:
    """``γ ⊙ (x − μ) / σ + β`` with μ, σ from ``stats``.

    For a residual *contribution* v (not a full input) pass ``shift=False`` to leave out
    β, and for LayerNorm centre v by its own mean (``center=True``), since mean-centring
    is linear: ``N(base + v) = N(base) + γ ⊙ (v − mean(v)) / σ``.
    """
    x = x.float()
    if params.kind == "layernorm" and center:
        x = x - x.mean(-1, keepdim=True)
    y = x / stats.sigma
    if params.weight is not None:
        y = y * params.weight.float()
    if shift and params.bias is not None:
        y = y + params.bias.float()
    return y


def apply_norm(params: NormParams, x: Float[Tensor, "*rows d"]) -> Float[Tensor, "*rows d"]:
    """The norm applied to ``x`` with its own statistics, in fp32."""
    return apply_frozen(params, x, frozen_stats(params, x))


__all__ = ["FrozenStats", "apply_frozen", "apply_norm", "frozen_stats"]
