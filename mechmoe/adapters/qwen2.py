"""Qwen2 (dense): Llama layout with biased q/k/v projections."""

from mechmoe.adapters.spec import AdapterSpec, DenseMLPSpec, NormSpec

SPEC = AdapterSpec(
    name="qwen2",
    architectures=("Qwen2ForCausalLM",),
    description="Qwen2: dense SwiGLU, RMSNorm",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    dense=DenseMLPSpec(),
)
