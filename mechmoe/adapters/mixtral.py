"""Mixtral: softmax → top-k, always renormalised."""

from mechmoe.adapters.spec import AdapterSpec, MoESpec, NormSpec, RouterSpec

SPEC = AdapterSpec(
    name="mixtral",
    architectures=("MixtralForCausalLM",),
    description="Mixtral: 8 experts, top-2 renormalised, RMSNorm",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(routing=RouterSpec(renormalize=True, weights_dtype="float32")),
)
