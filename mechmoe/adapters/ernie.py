"""ERNIE-4.5-MoE: softmax scores, a statistics bias for choosing, clamped renormalisation.

``Ernie4_5_MoeTopKRouter`` takes a float32 softmax over all experts, chooses the top-k of
softmax + ``moe_statics.e_score_correction_bias`` (the bias is for choosing only), and
weighs the chosen by their unbiased probabilities divided by their sum clamped at
``moe_norm_min`` from below, cast to the model's dtype. An ungated shared MLP
(``moe_num_shared_experts`` wide) is added. MoE layers run from ``moe_layer_start_index``
to ``moe_layer_end_index``, every ``moe_layer_interval``-th (``(layer + 1) % interval``).
"""

from mechmoe.adapters.spec import (
    AdapterSpec,
    DenseMLPSpec,
    LayerSchedule,
    MoESpec,
    NormSpec,
    RouterSpec,
)

SPEC = AdapterSpec(
    name="ernie4_5_moe",
    architectures=("Ernie4_5_MoeForCausalLM",),
    description="ERNIE-4.5-MoE: softmax + statistics bias, clamped renorm; shared MLP",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(
        routing=RouterSpec(
            score="softmax",
            selection_bias="moe_statics.e_score_correction_bias",
            renormalize=True,
            renorm_min=("moe_norm_min",),
        ),
        layers=LayerSchedule(
            start=("moe_layer_start_index",),
            end=("moe_layer_end_index",),
            period=("moe_layer_interval",),
            offset=-1,
        ),
        shared=DenseMLPSpec(
            gate="mlp.shared_experts.gate_proj",
            up="mlp.shared_experts.up_proj",
            down="mlp.shared_experts.down_proj",
            act="mlp.shared_experts.act_fn",
        ),
    ),
    dense=DenseMLPSpec(),
)
