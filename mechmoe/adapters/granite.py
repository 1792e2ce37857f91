"""Granite-MoE and Granite-MoE-Shared: softmax over the top-k logits; scaled residual.

``GraniteMoeTopKRouter`` takes the top-k of float32 logits and softmaxes over the k.
Each sub-layer's output is multiplied by ``residual_multiplier`` before it is added to
the residual stream, and the logits are divided by ``logits_scaling``. Granite-MoE-Shared
adds a ``shared_mlp`` (fused ``input_linear``: gate half then up half) *beside* the MoE
block, its output added to the block's before the multiplier. Granite-MoE-Hybrid
(Granite-4) is Granite-MoE-Shared in a stack whose ``layers_block_type`` entries
``"linear_attention"`` mix tokens with Mamba-2 (``mamba``: no heads), the others with
attention.
"""

from mechmoe.adapters.spec import (
    AdapterSpec,
    DenseMLPSpec,
    Factor,
    LayerSchedule,
    MoESpec,
    NormSpec,
    RouterSpec,
)

_ROUTER = RouterSpec(select="logits", score="softmax", renormalize=False)

GRANITEMOE = AdapterSpec(
    name="granitemoe",
    architectures=("GraniteMoeForCausalLM",),
    description="Granite-MoE: top-k logits → softmax over k; residual and logit multipliers",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    ffn="block_sparse_moe",
    moe=MoESpec(
        router="block_sparse_moe.router",
        routing=_ROUTER,
        experts="block_sparse_moe.experts",
    ),
    residual_scale=Factor(value=("residual_multiplier",)),
    logit_scale=Factor(value=("logits_scaling",), divide=True),
)

GRANITEMOE_SHARED = AdapterSpec(
    name="granitemoeshared",
    architectures=("GraniteMoeSharedForCausalLM",),
    description="Granite-MoE-Shared: Granite-MoE plus a shared MLP beside the MoE block",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    ffn="block_sparse_moe",
    moe=MoESpec(
        router="block_sparse_moe.router",
        routing=_ROUTER,
        experts="block_sparse_moe.experts",
        shared=DenseMLPSpec(
            gate_up="shared_mlp.input_linear",
            down="shared_mlp.output_linear",
            act="shared_mlp.activation",
        ),
        shared_in_ffn=False,
    ),
    residual_scale=Factor(value=("residual_multiplier",)),
    logit_scale=Factor(value=("logits_scaling",), divide=True),
)

GRANITEMOE_HYBRID = AdapterSpec(
    name="granitemoehybrid",
    architectures=("GraniteMoeHybridForCausalLM",),
    description="Granite-MoE-Hybrid (Granite-4): Granite-MoE-Shared with Mamba-2 layers",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    other_mixer="mamba",
    attention_layers=LayerSchedule(
        types=("layer_types", "layers_block_type"), type_is=("full_attention", "attention")
    ),
    ffn="block_sparse_moe",
    moe=GRANITEMOE_SHARED.moe,
    residual_scale=Factor(value=("residual_multiplier",)),
    logit_scale=Factor(value=("logits_scaling",), divide=True),
)
