"""DeepSeek-V3 and GLM-4-MoE: sigmoid scores, a selection bias, group-limited top-k.

Both routers (``DeepseekV3TopkRouter``, ``Glm4MoeTopkRouter``) score experts with a
float32 sigmoid, choose the top-k of score + ``e_score_correction_bias`` within the
``topk_group`` best of ``n_group`` groups (a group scores the sum of its two best), weigh
the chosen by their unbiased scores (renormalised with +1e-20 where ``norm_topk_prob``),
times ``routed_scaling_factor``. An ungated shared MLP is added; the first
``first_k_dense_replace`` layers are dense. DeepSeek-V3 uses latent attention: its heads
are ``v_head_dim`` wide at the output projection.
"""

from mechmoe.adapters.spec import (
    AdapterSpec,
    DenseMLPSpec,
    GroupSpec,
    LayerSchedule,
    MoESpec,
    NormSpec,
    RouterSpec,
)

#: The router both families share.
SIGMOID_GROUPED = RouterSpec(
    score="sigmoid",
    selection_bias="e_score_correction_bias",
    groups=GroupSpec(n_group=("n_group",), topk_group=("topk_group",), score="top2_sum"),
    renormalize=("norm_topk_prob",),
    renorm_eps=1e-20,
    scale=("routed_scaling_factor",),
    weights_dtype="float32",
    sorted=False,
)

_MOE = MoESpec(
    routing=SIGMOID_GROUPED,
    layers=LayerSchedule(start=("first_k_dense_replace",)),
    shared=DenseMLPSpec(
        gate="mlp.shared_experts.gate_proj",
        up="mlp.shared_experts.up_proj",
        down="mlp.shared_experts.down_proj",
        act="mlp.shared_experts.act_fn",
    ),
)

DEEPSEEK_V3 = AdapterSpec(
    name="deepseek_v3",
    architectures=("DeepseekV3ForCausalLM",),
    description="DeepSeek-V3: sigmoid + selection bias, group-limited top-k, × scale; shared MLP",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=_MOE,
    dense=DenseMLPSpec(),
    head_dim=("v_head_dim",),
)

GLM4_MOE = AdapterSpec(
    name="glm4_moe",
    architectures=("Glm4MoeForCausalLM",),
    description="GLM-4-MoE (GLM-4.5): DeepSeek-V3's router; shared MLP; dense first layers",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=_MOE,
    dense=DenseMLPSpec(),
)
