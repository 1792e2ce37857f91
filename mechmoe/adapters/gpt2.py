"""GPT-2: Conv1D weights stored (in, out), biased LayerNorm, ungated GELU MLP."""

from mechmoe.adapters.spec import AdapterSpec, DenseMLPSpec, NormSpec

SPEC = AdapterSpec(
    name="gpt2",
    architectures=("GPT2LMHeadModel",),
    description="GPT-2: dense GELU MLP, LayerNorm with bias, Conv1D projections",
    layers="transformer.h",
    final_norm="transformer.ln_f",
    attn_out_proj="attn.c_proj",
    attn_out_layout="conv1d",
    ffn_in_norm="ln_2",
    norm=NormSpec(kind="layernorm", eps=("layer_norm_epsilon",), weight=True, bias=True),
    dense=DenseMLPSpec(gate=None, up="mlp.c_fc", down="mlp.c_proj", act="mlp.act", layout="conv1d"),
)
