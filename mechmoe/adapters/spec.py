"""The adapter spec: a frozen, declarative description of one model family.

A spec says *where* things are (module paths relative to the model or to one decoder
layer) and *which rule* the family follows (norm kind, routing renormalisation). The
engine reads these fields; it never asks which family a model belongs to.

Paths are dotted attribute paths as accepted by ``torch.nn.Module.get_submodule``.
"Config keys" are tuples of candidate attribute names on the HF config, tried in order,
so one spec covers config classes that spell a field differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mechmoe._types import NormKind, WeightLayout

ConfigKeys = tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class NormSpec:
    """How a norm computes its output.

    Parameters
    ----------
    kind
        ``"rmsnorm"``: ``γ ⊙ x / sqrt(mean(x²) + eps)``; ``"layernorm"``:
        ``γ ⊙ (x − mean(x)) / sqrt(var(x) + eps) + β``.
    eps
        Config keys to read eps from, or a fixed float where the family hard-codes it.
    weight, bias
        Whether the norm has a learnt scale γ / shift β (OLMo v1 has neither).
    """

    kind: NormKind
    eps: ConfigKeys | float = ("rms_norm_eps",)
    weight: bool = True
    bias: bool = False


@dataclass(frozen=True, kw_only=True)
class DenseMLPSpec:
    """A dense (or shared-expert) MLP made of separate projections.

    Paths are relative to the decoder layer. ``gate`` is ``None`` for an ungated MLP
    (GPT-2: ``act(W_in x)``); otherwise neurons are ``act(W_gate x) ⊙ (W_up x)``.
    ``up`` is the input projection of an ungated MLP. ``layout`` says whether weights are
    stored ``(out, in)`` (``nn.Linear``) or ``(in, out)`` (GPT-2's ``Conv1D``).
    """

    gate: str | None = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"
    act: str = "mlp.act_fn"
    layout: WeightLayout = "linear"


@dataclass(frozen=True, kw_only=True)
class MoESpec:
    """A sparse MoE block with fused expert weights (transformers 5.x layout).

    Parameters
    ----------
    router
        Module whose output is ``(router_logits, top_k_weights, top_k_index)``.
    experts
        Module holding the fused weights ``gate_up`` ``(E, 2I, d)`` (gate half first) and
        ``down`` ``(E, d, I)``, and the activation ``act``.
    renormalize
        ``True``/``False``, or config keys of a boolean (``norm_topk_prob``): whether the
        top-k softmax weights are renormalised to sum to one.
    shared, shared_gate
        Optional shared expert (always active) and the ``Linear(d, 1)`` whose sigmoid
        scales it (Qwen2-MoE).
    """

    router: str = "mlp.gate"
    experts: str = "mlp.experts"
    gate_up: str = "gate_up_proj"
    down: str = "down_proj"
    act: str = "act_fn"
    n_experts: ConfigKeys = ("num_experts", "num_local_experts")
    top_k: ConfigKeys = ("num_experts_per_tok",)
    renormalize: bool | ConfigKeys = ("norm_topk_prob",)
    shared: DenseMLPSpec | None = None
    shared_gate: str | None = None


@dataclass(frozen=True, kw_only=True)
class AdapterSpec:
    """Everything mechmoe needs to know about one model family.

    The residual-stream bookkeeping is the same for every family:
    ``r[l] = h[l-1] + A[l]`` and ``h[l] = r[l] + F[l]``. Families differ only in where
    norms sit, which these fields record:

    - ``ffn_in_norm``: the pre-FFN norm; its *input* is ``r[l]`` and its output is the
      FFN input. ``None`` when the FFN reads the residual directly (OLMo-2).
    - ``attn_out_norm`` / ``ffn_out_norm``: norms applied to a sub-layer's output before
      it is added to the residual (OLMo-2). ``None`` elsewhere.
    """

    name: str
    architectures: tuple[str, ...]
    description: str = ""
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    attn_out_proj: str = "self_attn.o_proj"
    attn_out_layout: WeightLayout = "linear"
    attn_out_norm: str | None = None
    ffn_in_norm: str | None = "post_attention_layernorm"
    ffn: str = "mlp"
    ffn_out_norm: str | None = None
    norm: NormSpec = field(default_factory=lambda: NormSpec(kind="rmsnorm"))
    moe: MoESpec | None = None
    dense: DenseMLPSpec | None = None
    n_heads: ConfigKeys = ("num_attention_heads", "n_head")
    head_dim: ConfigKeys = ("head_dim",)
    d_model: ConfigKeys = ("hidden_size", "n_embd")
    n_layers: ConfigKeys = ("num_hidden_layers", "n_layer")

    def __post_init__(self) -> None:
        if not self.architectures:
            raise ValueError(f"adapter {self.name!r} lists no architectures")
        if self.moe is None and self.dense is None:
            raise ValueError(f"adapter {self.name!r} has neither a MoE nor a dense FFN spec")


_MISSING = object()


def config_value(config: Any, keys: ConfigKeys | float | bool, *, what: str) -> Any:
    """Read the first of ``keys`` that the HF config defines (or return a fixed value)."""
    if not isinstance(keys, tuple):
        return keys
    for key in keys:
        value = getattr(config, key, _MISSING)
        if value is not _MISSING and value is not None:
            return value
    from mechmoe.core.errors import SpecMismatchError

    raise SpecMismatchError(
        f"the model config has no {what} (looked for {', '.join(keys)}); "
        "fix the adapter spec's config keys for this family"
    )


__all__ = ["AdapterSpec", "ConfigKeys", "DenseMLPSpec", "MoESpec", "NormSpec", "config_value"]
