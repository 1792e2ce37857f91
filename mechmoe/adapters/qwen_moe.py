"""Qwen2-MoE (shared expert with a sigmoid gate) and Qwen3-MoE (no shared expert).

Qwen-MoE configs may make some layers dense (``mlp_only_layers``,
``decoder_sparse_step``); those layers use the ``dense`` spec.
"""

from mechmoe.adapters.spec import (
    AdapterSpec,
    DenseMLPSpec,
    MoESpec,
    NormSpec,
    RouterSpec,
)

QWEN2_MOE = AdapterSpec(
    name="qwen2_moe",
    architectures=("Qwen2MoeForCausalLM",),
    description="Qwen2-MoE: routed experts plus a sigmoid-gated shared expert",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(
        routing=RouterSpec(renormalize=("norm_topk_prob",)),
        shared=DenseMLPSpec(
            gate="mlp.shared_expert.gate_proj",
            up="mlp.shared_expert.up_proj",
            down="mlp.shared_expert.down_proj",
            act="mlp.shared_expert.act_fn",
        ),
        shared_gate="mlp.shared_expert_gate",
    ),
    dense=DenseMLPSpec(),
)

QWEN3_MOE = AdapterSpec(
    name="qwen3_moe",
    architectures=("Qwen3MoeForCausalLM",),
    description="Qwen3-MoE: routed experts, renormalised top-k, no shared expert",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(routing=RouterSpec(renormalize=("norm_topk_prob",))),
    dense=DenseMLPSpec(),
)
