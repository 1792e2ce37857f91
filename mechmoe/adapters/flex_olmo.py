"""FlexOlmo: OLMoE's router in OLMo-2's layer (norms on the sub-layer outputs).

``FlexOlmoTopKRouter`` is OLMoE's: float32 softmax over all experts, top-k, renormalised
where ``norm_topk_prob``, cast to the logits' dtype. The decoder layer is OLMo-2's: no
norm before attention or the MoE block; ``post_attention_layernorm`` and
``post_feedforward_layernorm`` normalise each sub-layer's output before it is added.
"""

from mechmoe.adapters.spec import AdapterSpec, MoESpec, NormSpec, RouterSpec

SPEC = AdapterSpec(
    name="flex_olmo",
    architectures=("FlexOlmoForCausalLM",),
    description="FlexOlmo: OLMoE's softmax → top-k router in OLMo-2's post-norm layer",
    attn_out_norm="post_attention_layernorm",
    ffn_in_norm=None,
    ffn_out_norm="post_feedforward_layernorm",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(routing=RouterSpec(renormalize=("norm_topk_prob",))),
)
