"""LFM2-MoE: a short-convolution/attention hybrid; sigmoid scores, an expert bias for choosing.

Layers whose ``layer_types`` entry is ``"conv"`` mix tokens with a gated short
convolution (``conv``: no attention heads); the others with attention (``self_attn``,
output projection ``out_proj``). ``Lfm2MoeTopKRouter`` (``feed_forward.gate``) takes the
sigmoid of the logits in the model's dtype, chooses the top-k of score +
``expert_bias`` (a buffer of the MoE block, passed to the router; configs with
``use_expert_bias=False`` have none and are refused by path), weighs the chosen by their
unbiased scores, renormalised (+1e-6) where ``norm_topk_prob``, times
``routed_scaling_factor``. The first ``num_dense_layers`` layers have a dense MLP
(``w1``/``w3``/``w2`` with ``F.silu``). Norms: ``operator_norm`` before the mixer,
``ffn_norm`` before the FFN, ``model.embedding_norm`` at the end.
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
    name="lfm2_moe",
    architectures=("Lfm2MoeForCausalLM",),
    description="LFM2-MoE: short-conv/attention hybrid; sigmoid + expert bias, renorm × scale",
    final_norm="model.embedding_norm",
    attn_out_proj="self_attn.out_proj",
    other_mixer="conv",
    attention_layers=LayerSchedule(types=("layer_types",), type_is=("full_attention",)),
    ffn_in_norm="ffn_norm",
    ffn="feed_forward",
    norm=NormSpec(kind="rmsnorm", eps=("norm_eps",)),
    moe=MoESpec(
        router="feed_forward.gate",
        routing=RouterSpec(
            score="sigmoid",
            selection_bias="expert_bias",
            params_on="ffn",
            renormalize=("norm_topk_prob",),
            renorm_eps=1e-6,
            scale=("routed_scaling_factor",),
            float32=False,
        ),
        experts="feed_forward.experts",
        layers=LayerSchedule(start=("num_dense_layers",)),
    ),
    dense=DenseMLPSpec(
        gate="feed_forward.w1", up="feed_forward.w3", down="feed_forward.w2", act_name="silu"
    ),
)
