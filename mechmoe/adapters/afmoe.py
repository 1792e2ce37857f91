"""AFMoE (Arcee Trinity): sigmoid scores, an expert bias for choosing, renormalised × scale.

``AfmoeTokenChoiceRouter`` casts its logits (``router.gate``) to float32, takes their
sigmoid, chooses the top-k of score + ``expert_bias`` (a parameter of the MoE block,
``mlp``, passed to the router), and weighs the chosen by their unbiased scores
renormalised (+1e-20) times ``route_scale``. An ungated shared MLP is added; the first
``num_dense_layers`` layers are dense. Each sub-layer is normalised before and after
(``input_layernorm``/``post_attention_layernorm``, ``pre_mlp_layernorm``/
``post_mlp_layernorm``); attention output is gated per head before ``o_proj``.
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
    name="afmoe",
    architectures=("AfmoeForCausalLM",),
    description="AFMoE: sigmoid + expert bias (on the block), renorm × route_scale; shared MLP",
    attn_out_norm="post_attention_layernorm",
    ffn_in_norm="pre_mlp_layernorm",
    ffn_out_norm="post_mlp_layernorm",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(
        router="mlp.router",
        routing=RouterSpec(
            score="sigmoid",
            selection_bias="expert_bias",
            params_on="ffn",
            renormalize=True,
            renorm_eps=1e-20,
            scale=("route_scale",),
            weights_dtype="float32",
        ),
        layers=LayerSchedule(start=("num_dense_layers",)),
        shared=DenseMLPSpec(
            gate="mlp.shared_experts.gate_proj",
            up="mlp.shared_experts.up_proj",
            down="mlp.shared_experts.down_proj",
            act="mlp.shared_experts.act_fn",
        ),
    ),
    dense=DenseMLPSpec(),
)
