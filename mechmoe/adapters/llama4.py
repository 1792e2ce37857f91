"""Llama-4 (text): sigmoid of the top-k logits, applied to the expert's *input*.

``Llama4Router`` returns ``(scores (rows, E), logits)``: the sigmoid of the top-k logits
at the chosen experts, 0 elsewhere. ``Llama4TextMoe`` multiplies each token by its score
before the experts (so a neuron's coefficient is its activation on the scaled token),
runs every expert with ``bmm`` on ``gate_up_proj (E, d, 2I)`` and sums their stacked
outputs, and adds an ungated shared MLP. Layers listed in ``moe_layers`` are MoE, the
others dense; the FFN module is ``feed_forward``.
"""

from mechmoe.adapters.spec import (
    AdapterSpec,
    DenseMLPSpec,
    LayerSchedule,
    MoESpec,
    NormSpec,
    RouterSpec,
)


def _mlp(prefix: str) -> DenseMLPSpec:
    return DenseMLPSpec(
        gate=f"{prefix}.gate_proj",
        up=f"{prefix}.up_proj",
        down=f"{prefix}.down_proj",
        act=f"{prefix}.activation_fn",
    )


SPEC = AdapterSpec(
    name="llama4",
    architectures=("Llama4ForCausalLM",),
    description="Llama-4 text: top-k logits → sigmoid, weight on the expert input; shared MLP",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    ffn="feed_forward",
    moe=MoESpec(
        router="feed_forward.router",
        routing=RouterSpec(
            score="sigmoid",
            select="logits",
            renormalize=False,
            apply_to="input",
            returns=("table", "logits"),
        ),
        experts="feed_forward.experts",
        layout="transposed",
        output="stacked",
        n_experts=("num_local_experts",),
        layers=LayerSchedule(listed=("moe_layers",)),
        shared=_mlp("feed_forward.shared_expert"),
    ),
    dense=_mlp("feed_forward"),
)
