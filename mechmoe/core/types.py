"""mechmoe's value types: what every layer above passes around.

Sizes (:class:`ModelDims`), weight views in one canonical layout (:class:`NormParams`,
:class:`FFNWeights`), a tokenized :class:`Batch`, the record of one forward pass
(:class:`Capture`, :class:`LayerCapture`), typed site values (:class:`RouterOutput`) and
:class:`ModelView`, the part of the model handle that backends and edits may use. Nothing
here imports a backend or anything of mechmoe above :mod:`mechmoe._types` (the routing
request :meth:`ModelView.reroute` takes is named for type checkers only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechmoe._types import LayerKind, MixerKind, NormKind

if TYPE_CHECKING:
    import xarray as xr

    from mechmoe.core.interventions.request import RoutingRequest


@dataclass(frozen=True)
class NormParams:
    """A norm's parameters: ``weight``/``bias`` are ``None`` where the norm has none."""

    kind: NormKind
    weight: Tensor | None
    bias: Tensor | None
    eps: float


@dataclass(frozen=True)
class FFNWeights:
    """FFN weights of one layer in one layout, as views (no copies).

    ``w_gate``/``w_up`` are ``(expert, neuron, d_model)``, ``w_down`` is
    ``(expert, d_model, neuron)``; a dense MLP has one expert. ``w_gate`` is ``None`` for
    an ungated MLP, whose neurons are ``act(W_up x + b_up)``. Biases are per expert:
    ``b_gate``/``b_up`` ``(expert, neuron)`` and ``b_down`` ``(expert, d_model)`` (an
    expert's down bias belongs to the expert, not to a neuron).

    A gated neuron is ``act(clamp(g, max=limit)) · (clamp(u, ±limit) + up_offset)`` with
    ``g = W_gate x + b_gate`` and ``u = W_up x + b_up`` (``limit=None``: no clamp; plain
    SwiGLU has ``up_offset=0``). ``gate_on`` says where the routing weight applies:
    ``"output"`` (it multiplies the expert's output) or ``"input"`` (it multiplies the
    token before the expert, as in Llama-4). ``project``, when set, computes ``(g, u)`` of
    one expert from the stored fused weight the way the family does (one product, no
    strided copies); the views give the same values.
    """

    w_gate: Float[Tensor, "expert neuron d_model"] | None
    w_up: Float[Tensor, "expert neuron d_model"]
    w_down: Float[Tensor, "expert d_model neuron"]
    b_up: Float[Tensor, "expert neuron"] | None
    b_down: Float[Tensor, "expert d_model"] | None
    act: Callable[[Tensor], Tensor]
    b_gate: Float[Tensor, "expert neuron"] | None = None
    limit: float | None = None
    up_offset: float = 0.0
    gate_on: Literal["output", "input"] = "output"
    project: Callable[[Tensor, int], tuple[Tensor, Tensor]] | None = None

    def activations(self, x: Float[Tensor, "n d_model"], expert: int) -> Float[Tensor, "n neuron"]:
        """Neuron activations of ``expert`` for inputs ``x``, computed from the weights."""
        if self.w_gate is None:
            up = x @ self.w_up[expert].T
            if self.b_up is not None:
                up = up + self.b_up[expert]
            return self.act(up)
        if self.project is not None:
            gate, up = self.project(x, expert)
        else:
            gate = x @ self.w_gate[expert].T
            up = x @ self.w_up[expert].T
            if self.b_gate is not None:
                gate = gate + self.b_gate[expert]
            if self.b_up is not None:
                up = up + self.b_up[expert]
        if self.limit is not None:
            gate = gate.clamp(min=None, max=self.limit)
            up = up.clamp(min=-self.limit, max=self.limit)
        if self.up_offset:
            up = up + self.up_offset
        return self.act(gate) * up

    def coefficients(
        self, x: Float[Tensor, "n d_model"], expert: int, weight: Float[Tensor, " n"]
    ) -> Float[Tensor, "n neuron"]:
        """What multiplies each down-projection column of ``expert`` when it is routed
        ``x`` with routing weight ``weight``: ``weight · m(x)``, or ``m(weight · x)`` where
        the weight applies to the expert's input."""
        w = weight.to(x.dtype)[:, None]
        if self.gate_on == "input":
            return self.activations(x * w, expert)
        return w * self.activations(x, expert)


@dataclass(frozen=True)
class ModelDims:
    """Sizes read once from the config and the weights. Per-layer tuples allow mixed MoE/dense stacks."""

    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    vocab: int
    max_positions: int | None
    layer_kinds: tuple[LayerKind, ...]
    n_experts: tuple[int, ...]
    top_k: tuple[int, ...]
    d_ffn: tuple[int, ...]
    d_shared: tuple[int | None, ...]
    #: Each layer's token mixer (empty: every layer has attention heads).
    mixer_kinds: tuple[MixerKind, ...] = ()

    @property
    def is_moe(self) -> bool:
        return "moe" in self.layer_kinds

    def has_heads(self, layer: int) -> bool:
        """Whether layer ``layer``'s token mixer is attention (hybrids: Mamba layers have none)."""
        return not self.mixer_kinds or self.mixer_kinds[layer] == "attention"

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """The layers that have attention heads."""
        return tuple(i for i in range(self.n_layers) if self.has_heads(i))


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

    def flat_positions(self) -> tuple[Tensor, Tensor, Tensor]:
        """Index tensors ``(bidx, pidx, flat)``, each ``(batch, pos)``, for gathering the
        captured positions from ``(batch, seq, …)`` values (``x[bidx, pidx]``) or from
        ``(batch·seq, …)`` rows (``x[flat]``)."""
        pidx = self.positions
        bidx = torch.arange(self.size, device=pidx.device)[:, None].expand_as(pidx)
        return bidx, pidx, bidx * self.seq_len + pidx


@dataclass(frozen=True)
class LayerCapture:
    """What one decoder layer did at the captured positions.

    ``resid_pre`` is ``h[l-1]``; ``attn_out`` is ``A[l]`` (after any output norm and the
    family's residual multiplier) and ``attn_raw`` the attention output projection before
    them (on a layer without heads, ``mixer="recurrent"``: the token mixer's output);
    ``resid_mid`` is ``r[l]``; ``ffn_in`` is the FFN input ``x`` (after its norm);
    ``ffn_raw`` the FFN's output (plus a shared expert that sits beside the FFN module)
    and ``ffn_out`` is ``F[l]`` (after any output norm and residual multiplier).
    ``head_z`` is each head's slice of the output projection's input and ``heads`` each
    head's contribution through its slice of ``W_O`` (no bias, no residual multiplier),
    in ``d_model`` space; a layer without heads has zero of them.

    Routing: ``router_logits`` are the router's logits over all experts,
    ``selection_scores`` what its top-k ranked (score plus any selection bias, or the
    logits where the family selects on them), ``expert_weight`` the routing weight of each
    chosen expert as the router gave it (unbiased, renormalised where the family does,
    with its scaling factor), one per slot. ``expert_gate`` is the factor on each chosen
    expert's *output*: the routing weight, or 1 where the family applies the weight to
    the expert's input (Llama-4). ``acts`` are the chosen experts' neuron activations on
    the input each expert actually received, so ``expert_gate · acts[k]`` is the
    coefficient of down-projection column ``k`` (dense layers: one slot, expert 0, gate
    1). ``shared_acts``/``shared_gate`` describe a shared expert where the family has one.
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
    selection_scores: Float[Tensor, "batch pos expert"] | None = None
    expert_weight: Float[Tensor, "batch pos slot"] | None = None
    mixer: MixerKind = "attention"


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


@dataclass(frozen=True)
class RouterOutput:
    """What a router decided for every token row of a pass (rows are ``batch·seq``).

    ``logits`` are the raw router scores over all experts; ``weights`` and ``index`` are the
    gates and expert ids of the ``k`` slots the block uses. Edits at the ``router`` site
    receive and return this record.
    """

    logits: Float[Tensor, "row expert"]
    weights: Float[Tensor, "row slot"]
    index: Int[Tensor, "row slot"]

    def __iter__(self):  # unpacks as (logits, weights, index), the order HF routers return
        return iter((self.logits, self.weights, self.index))

    def rows(self, flat: Tensor) -> RouterOutput:
        """The same record restricted to the token rows ``flat``."""
        return RouterOutput(self.logits[flat], self.weights[flat], self.index[flat])


@runtime_checkable
class MoELayout(Protocol):
    """What the layers below the adapters read of an MoE block's spec: paths relative to
    the decoder layer (:class:`mechmoe.adapters.MoESpec` has them)."""

    @property
    def router(self) -> str: ...

    @property
    def experts(self) -> str: ...

    @property
    def shared(self) -> object | None: ...


@runtime_checkable
class SpecView(Protocol):
    """What the layers below the adapters read of an adapter spec: its name and module
    paths (:class:`mechmoe.adapters.AdapterSpec` has them; paths relative to the model,
    or to one decoder layer for the per-layer ones)."""

    @property
    def name(self) -> str: ...

    @property
    def layers(self) -> str: ...

    @property
    def final_norm(self) -> str: ...

    @property
    def unembed(self) -> str: ...

    @property
    def attn_out_proj(self) -> str: ...

    @property
    def attn_out_norm(self) -> str | None: ...

    @property
    def ffn_in_norm(self) -> str | None: ...

    @property
    def ffn(self) -> str: ...

    @property
    def ffn_out_norm(self) -> str | None: ...

    @property
    def moe(self) -> MoELayout | None: ...


@runtime_checkable
class ModelView(Protocol):
    """What backends, edits and value types may use of a model handle.

    :class:`mechmoe.model.Model` implements it; the protocol lets the layers below the
    handle name it without importing it.
    """

    name: str
    revision: str | None
    spec: SpecView
    dims: ModelDims
    hf: Any
    tokenizer: Any

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def layer_kind(self, layer: int) -> LayerKind: ...

    def ffn_weights(self, layer: int) -> FFNWeights: ...

    def shared_weights(self, layer: int) -> tuple[FFNWeights, Tensor | None] | None: ...

    def W_O(self, layer: int) -> Tensor: ...

    def renormalizes(self) -> bool: ...

    def reroute(self, layer: int, router: RouterOutput, request: RoutingRequest) -> RouterOutput:
        """The routing of MoE layer ``layer`` under a merged routing request, re-derived by
        the model's own rule from the router's output (``router``)."""
        ...

    def module(self, layer: int, path: str) -> Any: ...


__all__ = [
    "Batch",
    "Capture",
    "FFNWeights",
    "LayerCapture",
    "ModelDims",
    "ModelView",
    "MoELayout",
    "NormParams",
    "RouterOutput",
    "SpecView",
]
