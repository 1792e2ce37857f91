"""Backend-neutral data: the tokenized batch, the capture record and the edit protocol.

A backend runs *one* forward pass over a batch and fills a :class:`Capture`; edits
(interventions) are applied during that same pass at named sites. Nothing here imports
nnsight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from jaxtyping import Bool, Float, Int
from torch import Tensor

if TYPE_CHECKING:
    import xarray as xr

    from mechmoe.model import Model

Site = Literal["resid_pre", "heads", "router", "experts_out", "ffn_out"]
SITES: tuple[Site, ...] = ("resid_pre", "heads", "router", "experts_out", "ffn_out")


@dataclass(frozen=True)
class Batch:
    """Left-padded token ids of a batch of prompts, with the positions to capture.

    ``positions[b, p]`` indexes the padded sequence; ``valid[b, p]`` is False where a
    requested position falls on padding (only with ``positions="all"``).
    """

    prompts: tuple[str, ...]
    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]
    position_ids: Int[Tensor, "batch seq"]
    positions: Int[Tensor, "batch pos"]
    valid: Bool[Tensor, "batch pos"]

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


@dataclass(frozen=True)
class LayerCapture:
    """What one decoder layer did at the captured positions.

    ``resid_pre`` is ``h[l-1]``; ``attn_out`` is ``A[l]`` (after any output norm) and
    ``attn_raw`` the attention output projection before it; ``resid_mid`` is ``r[l]``;
    ``ffn_in`` is the FFN input ``x`` (after its norm); ``ffn_raw`` the FFN module's output
    and ``ffn_out`` is ``F[l]`` (after any output norm). ``head_z`` is each head's slice of
    the output projection's input and ``heads`` each head's contribution through its slice
    of ``W_O`` (no bias), in ``d_model`` space.

    Routing: ``expert_idx``/``expert_gate`` are the chosen experts and the gate weights
    the forward pass actually used, one per slot (dense layers: one slot, expert 0,
    gate 1). ``acts`` are the chosen experts' neuron activations ``act(W_gate x) ⊙ W_up x``.
    ``shared_acts``/``shared_gate`` describe a shared expert where the family has one.
    """

    resid_pre: Float[Tensor, "batch pos d_model"]
    head_z: Float[Tensor, "batch pos head head_dim"]
    heads: Float[Tensor, "batch pos head d_model"]
    attn_raw: Float[Tensor, "batch pos d_model"]
    attn_out: Float[Tensor, "batch pos d_model"]
    resid_mid: Float[Tensor, "batch pos d_model"]
    ffn_in: Float[Tensor, "batch pos d_model"]
    router_logits: Float[Tensor, "batch pos expert"] | None
    expert_idx: Int[Tensor, "batch pos slot"]
    expert_gate: Float[Tensor, "batch pos slot"]
    acts: Float[Tensor, "batch pos slot neuron"]
    shared_acts: Float[Tensor, "batch pos shared_neuron"] | None
    shared_gate: Float[Tensor, "batch pos"] | None
    ffn_raw: Float[Tensor, "batch pos d_model"]
    ffn_out: Float[Tensor, "batch pos d_model"]
    kind: Literal["moe", "dense"] = "dense"


@dataclass(frozen=True)
class Capture:
    """The record of one forward pass: per-layer captures, final residual and logits."""

    batch: Batch
    layers: tuple[LayerCapture, ...]
    final_resid: Float[Tensor, "batch pos d_model"]
    logits: Float[Tensor, "batch pos vocab"]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def to_xarray(
        self, *, include: tuple[str, ...] = ("resid_pre", "attn_out", "resid_mid", "ffn_out")
    ) -> xr.Dataset:
        """Residual-stream quantities as a labeled ``xarray.Dataset``.

        Variables in ``include`` get dims ``(prompt, position, layer, d_model)``;
        ``final_resid`` and ``logits`` are always included.
        """
        import numpy as np
        import torch
        import xarray as xr

        from mechmoe._types import D_MODEL, LAYER, POSITION, PROMPT, VOCAB

        data: dict[str, Any] = {}
        for name in include:
            stacked = torch.stack([getattr(lc, name) for lc in self.layers], dim=2)
            data[name] = ((PROMPT, POSITION, LAYER, D_MODEL), stacked.detach().cpu().numpy())
        data["final_resid"] = ((PROMPT, POSITION, D_MODEL), self.final_resid.detach().cpu().numpy())
        data["logits"] = ((PROMPT, POSITION, VOCAB), self.logits.detach().cpu().numpy())
        data["valid"] = ((PROMPT, POSITION), self.batch.valid.cpu().numpy())
        data["token_index"] = ((PROMPT, POSITION), self.batch.positions.cpu().numpy())
        coords = {
            PROMPT: np.array(self.batch.prompts, dtype=object),
            LAYER: np.arange(self.n_layers),
        }
        return xr.Dataset(data, coords=coords, attrs={k: str(v) for k, v in self.meta.items()})


@dataclass
class EditContext:
    """What an edit may read when it runs at a site.

    ``state`` holds, per layer, full ``(batch·seq, …)`` tensors seen earlier in the
    same pass: ``"ffn_in"`` (the FFN input, flattened) and ``"routing"`` (the
    ``(logits, weights, index)`` triple after any router edit).
    """

    model: Model
    batch: Batch
    state: dict[tuple[int, str], Any] = field(default_factory=dict)


@runtime_checkable
class Edit(Protocol):
    """An intervention applied inside the capture pass.

    ``sites`` names the sites it touches; ``validate`` checks it against a model
    before any forward pass and raises :class:`mechmoe.errors.InvalidInputError`;
    ``apply`` returns the new value for ``site`` at ``layer`` (or ``None`` to leave it).

    Values by site: ``resid_pre`` ``(batch, seq, d_model)``; ``heads`` ``(batch, seq,
    head, head_dim)`` (the output projection's input); ``router`` the triple
    ``(logits (batch·seq, E), weights (batch·seq, k), index (batch·seq, k))``;
    ``experts_out`` ``(batch·seq, d_model)``; ``ffn_out`` ``(batch, seq, d_model)``.
    """

    sites: frozenset[str]

    def validate(self, model: Model) -> None: ...

    def apply(self, site: str, layer: int, value: Any, ctx: EditContext) -> Any: ...


__all__ = ["SITES", "Batch", "Capture", "Edit", "EditContext", "LayerCapture", "Site"]
