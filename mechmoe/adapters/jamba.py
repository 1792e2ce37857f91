"""Jamba: a hybrid of Mamba and attention layers, MoE every other layer.

Layers whose ``layers_block_type`` is ``"mamba"`` mix tokens with a Mamba block (no
attention heads: its output is what the layer adds); the others with attention. Layers
with ``layer % expert_layer_period == expert_layer_offset`` hold a sparse MoE block
(softmax over all experts in float32, top-k, not renormalised); the rest a dense MLP.
The FFN module is ``feed_forward`` after ``pre_ff_layernorm``; the final norm is
``final_layernorm``.
"""

from mechmoe.adapters.spec import (
    AdapterSpec,
    DenseMLPSpec,
    LayerSchedule,
    MoESpec,
    NormSpec,
    RouterSpec,
)

SPEC = AdapterSpec(
    name="jamba",
    architectures=("JambaForCausalLM",),
    description="Jamba: Mamba/attention hybrid; softmax → top-k MoE every other layer",
    final_norm="model.final_layernorm",
    other_mixer="mamba",
    attention_layers=LayerSchedule(types=("layers_block_type",), type_is=("attention",)),
    ffn_in_norm="pre_ff_layernorm",
    ffn="feed_forward",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(
        router="feed_forward.router",
        routing=RouterSpec(renormalize=False),
        experts="feed_forward.experts",
        layers=LayerSchedule(period=("expert_layer_period",), offset=("expert_layer_offset",)),
    ),
    dense=DenseMLPSpec(
        gate="feed_forward.gate_proj",
        up="feed_forward.up_proj",
        down="feed_forward.down_proj",
        act="feed_forward.act_fn",
    ),
)
