"""OLMo v1 (allenai/OLMo-7B-hf): LayerNorm without weight or bias, eps fixed at 1e-5."""

from mechmoe.adapters.spec import AdapterSpec, DenseMLPSpec, NormSpec

SPEC = AdapterSpec(
    name="olmo",
    architectures=("OlmoForCausalLM",),
    description="OLMo v1: dense SwiGLU, non-parametric LayerNorm",
    norm=NormSpec(kind="layernorm", eps=1e-5, weight=False, bias=False),
    dense=DenseMLPSpec(),
)
