"""HunYuan-MoE-V1: softmax → top-k, always renormalised; k may differ per layer.

``HunYuanMoEV1Gate`` computes its logits with a float32 ``wg`` linear, takes the float32
softmax over all experts and the top-k (``moe_topk``: one number, or one per layer),
renormalises the chosen probabilities and casts them to the logits' dtype. Every layer
is MoE and adds an ungated ``shared_mlp`` to the routed experts.
"""

from mechmoe.adapters.spec import AdapterSpec, DenseMLPSpec, MoESpec, NormSpec, RouterSpec

SPEC = AdapterSpec(
    name="hunyuan_v1_moe",
    architectures=("HunYuanMoEV1ForCausalLM",),
    description="HunYuan-MoE-V1: softmax → top-k (per-layer k), renormalised; shared MLP",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(
        routing=RouterSpec(renormalize=True),
        top_k=("moe_topk", "num_experts_per_tok"),
        shared=DenseMLPSpec(
            gate="mlp.shared_mlp.gate_proj",
            up="mlp.shared_mlp.up_proj",
            down="mlp.shared_mlp.down_proj",
            act="mlp.shared_mlp.act_fn",
        ),
    ),
)
