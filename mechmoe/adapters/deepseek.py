"""The DeepSeek router family: DeepSeek-V2/V3, GLM-4-MoE(-Lite), dots1, EXAONE-MoE.

DeepSeek-V3's router (``DeepseekV3TopkRouter``; GLM-4-MoE's, GLM-4-MoE-Lite's, dots1's
and EXAONE-MoE's are the same code) scores experts with a float32 sigmoid, chooses the top-k of score +
``e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups (a
group scores the sum of its two best), weighs the chosen by their unbiased scores
(renormalised with +1e-20 where ``norm_topk_prob``), times ``routed_scaling_factor``.
DeepSeek-V2's (``DeepseekV2TopkRouter``) takes a float32 softmax instead, with no bias
and no renormalisation; its groups (``topk_method="group_limited_greedy"``) score their
best expert, and ``"greedy"`` is plain top-k. Every one adds an ungated shared MLP; the
first ``first_k_dense_replace`` layers are dense (GLM-4-MoE-Lite, EXAONE-MoE:
``mlp_layer_types``).
DeepSeek-V2/V3 and GLM-4-MoE-Lite use latent attention: their heads are ``v_head_dim``
wide at the output projection.
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

#: DeepSeek-V2's router: softmax, greedy or group-limited (best expert per group), × scale.
SOFTMAX_GROUPED = RouterSpec(
    score="softmax",
    groups=GroupSpec(score="max", method=("topk_method",), method_is=("group_limited_greedy",)),
    renormalize=False,
    scale=("routed_scaling_factor",),
    weights_dtype="float32",
    sorted=False,
)

_SHARED = DenseMLPSpec(
    gate="mlp.shared_experts.gate_proj",
    up="mlp.shared_experts.up_proj",
    down="mlp.shared_experts.down_proj",
    act="mlp.shared_experts.act_fn",
)
_DENSE_FIRST = LayerSchedule(start=("first_k_dense_replace",))

_MOE = MoESpec(routing=SIGMOID_GROUPED, layers=_DENSE_FIRST, shared=_SHARED)

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

DEEPSEEK_V2 = AdapterSpec(
    name="deepseek_v2",
    architectures=("DeepseekV2ForCausalLM",),
    description="DeepSeek-V2: softmax, greedy or group-limited (group max) top-k, × scale; shared MLP",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(routing=SOFTMAX_GROUPED, layers=_DENSE_FIRST, shared=_SHARED),
    dense=DenseMLPSpec(),
    head_dim=("v_head_dim",),
)

GLM4_MOE_LITE = AdapterSpec(
    name="glm4_moe_lite",
    architectures=("Glm4MoeLiteForCausalLM",),
    description="GLM-4-MoE-Lite: DeepSeek-V3's router, latent attention; mlp_layer_types",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(
        routing=SIGMOID_GROUPED,
        layers=LayerSchedule(types=("mlp_layer_types",), type_is=("sparse",)),
        shared=_SHARED,
    ),
    dense=DenseMLPSpec(),
    head_dim=("v_head_dim",),
)

DOTS1 = AdapterSpec(
    name="dots1",
    architectures=("Dots1ForCausalLM",),
    description="dots1: DeepSeek-V3's router; shared MLP; dense first layers",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=_MOE,
    dense=DenseMLPSpec(),
)

EXAONE_MOE = AdapterSpec(
    name="exaone_moe",
    architectures=("ExaoneMoeForCausalLM",),
    description="EXAONE-MoE: DeepSeek-V3's router; shared MLP; mlp_layer_types; QK-norm",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(
        routing=SIGMOID_GROUPED,
        layers=LayerSchedule(types=("mlp_layer_types",), type_is=("sparse",)),
        shared=_SHARED,
    ),
    dense=DenseMLPSpec(),
)
