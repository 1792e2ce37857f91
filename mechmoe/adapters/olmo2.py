"""OLMo-2: norms on the sub-layer outputs, none on their inputs."""

from mechmoe.adapters.spec import AdapterSpec, DenseMLPSpec, NormSpec

SPEC = AdapterSpec(
    name="olmo2",
    architectures=("Olmo2ForCausalLM",),
    description="OLMo-2: dense SwiGLU, RMSNorm applied to attention and MLP outputs",
    attn_out_norm="post_attention_layernorm",
    ffn_in_norm=None,
    ffn_out_norm="post_feedforward_layernorm",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    dense=DenseMLPSpec(),
)
