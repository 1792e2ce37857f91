"""PhiMoE (Phi-3.5-MoE): the SparseMixer router, deterministic in eval; LayerNorms.

``sparsemixer`` picks two experts rank by rank: the best remaining logit, weighted by
the softmax over the remaining experts whose logit lies within a relative band
(``2 · router_jitter_noise``) of the chosen one's. The description names this selector
(``select="sparsemixer"``): no combination of the other parts states it. Norms are
LayerNorms with weight and bias (eps from ``rms_norm_eps``).
"""

from mechmoe.adapters.spec import AdapterSpec, MoESpec, NormSpec, RouterSpec

SPEC = AdapterSpec(
    name="phimoe",
    architectures=("PhimoeForCausalLM",),
    description="PhiMoE: SparseMixer top-2 (eval), LayerNorm with bias",
    norm=NormSpec(kind="layernorm", eps=("rms_norm_eps",), weight=True, bias=True),
    moe=MoESpec(
        router="mlp.router",
        routing=RouterSpec(
            select="sparsemixer",
            band=("router_jitter_noise",),
            renormalize=False,
            float32=False,
        ),
    ),
)
