"""Llama (and SmolLM2, which uses the Llama architecture)."""

from mechmoe.adapters.spec import AdapterSpec, DenseMLPSpec, NormSpec

SPEC = AdapterSpec(
    name="llama",
    architectures=("LlamaForCausalLM",),
    description="Llama: dense SwiGLU, RMSNorm",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    dense=DenseMLPSpec(),
)
