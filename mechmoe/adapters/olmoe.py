"""OLMoE (allenai/OLMoE-1B-7B): softmax → top-k, no renormalisation by default."""

from mechmoe.adapters.spec import AdapterSpec, MoESpec, NormSpec, RouterSpec

SPEC = AdapterSpec(
    name="olmoe",
    architectures=("OlmoeForCausalLM",),
    description="OLMoE: 64 experts, top-8, RMSNorm, norm_topk_prob=False",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(routing=RouterSpec(renormalize=("norm_topk_prob",))),
)
