"""What interventions need of a running model: :func:`head_means`.

The intervention values (``MaskHeads``, ``BanExperts``, …) and their composition live in
:mod:`mechmoe.core.interventions` (and the ``mechmoe`` namespace), the bottom layer, so
every backend can run them. :func:`head_means` runs the model, so it belongs to the
operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechmoe.core.errors import InvalidInputError

if TYPE_CHECKING:
    from mechmoe.model import Model


def head_means(model: Model, prompts: Sequence[str], *, batch_size: int = 32) -> dict[int, Tensor]:
    """Each head's mean o_proj-input slice over the real tokens of ``prompts``.

    Returns ``{layer: tensor (n_heads, head_dim)}``, ready for
    ``MaskHeads(..., mode="mean", means=...)`` so a mean-ablation uses a fixed reference
    distribution instead of the batch being run.
    """
    if not prompts:
        raise InvalidInputError("head_means needs at least one prompt")
    sums: list[Tensor] | None = None
    count = 0
    for start in range(0, len(prompts), batch_size):
        cap = model.capture(list(prompts[start : start + batch_size]), positions="all")
        valid = cap.batch.valid[:, :, None, None]
        count += int(cap.batch.valid.sum())
        part = [
            torch.where(valid, lc.head_z, torch.zeros((), dtype=lc.head_z.dtype))
            .sum((0, 1))
            .double()
            for lc in cap.layers
        ]
        sums = part if sums is None else [a + b for a, b in zip(sums, part, strict=True)]
    assert sums is not None
    return {layer: (s / max(count, 1)).to(model.dtype) for layer, s in enumerate(sums)}


__all__ = ["head_means"]
