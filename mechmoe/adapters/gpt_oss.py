"""GPT-OSS: top-k of the logits, softmax over the k; transposed experts with biases.

``GptOssTopKRouter`` is a biased linear map; its top-k logits are softmaxed in the model's
dtype. ``GptOssExperts`` stores ``gate_up_proj (E, d, 2I)`` with gate and up columns
interleaved, biases on both projections, and a clamped GLU
``(clamp(up, ±limit) + 1) · g · σ(alpha · g)`` with ``g = clamp(gate, max=limit)``.
The MLP block returns ``(hidden, router_scores)``. Attention sinks change attention
weights, not the output projection's input.
"""

from mechmoe.adapters.spec import AdapterSpec, GLUSpec, MoESpec, NormSpec, RouterSpec

SPEC = AdapterSpec(
    name="gpt_oss",
    architectures=("GptOssForCausalLM",),
    description="GPT-OSS: top-k logits → softmax over k; clamped GLU, interleaved biased experts",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(
        router="mlp.router",
        routing=RouterSpec(select="logits", score="softmax", renormalize=False, float32=False),
        layout="transposed",
        split="interleaved",
        gate_up_bias="gate_up_proj_bias",
        down_bias="down_proj_bias",
        act=None,
        glu=GLUSpec(alpha=("swiglu_alpha",), limit=("swiglu_limit",), up_offset=1.0),
    ),
)
