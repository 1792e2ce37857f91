"""MiniMax-M2: sigmoid scores, an expert bias for choosing, renormalised.

``MiniMaxM2TopKRouter`` takes the sigmoid of the float32 logits, chooses the top-k of
score + ``e_score_correction_bias`` (kept on the MoE block, ``mlp``, and passed to the
router), and weighs the chosen by their unbiased scores renormalised to sum to one
(float32). Every layer is MoE; there is no shared expert.
"""

from mechmoe.adapters.spec import AdapterSpec, MoESpec, NormSpec, RouterSpec

MINIMAX_M2 = AdapterSpec(
    name="minimax_m2",
    architectures=("MiniMaxM2ForCausalLM",),
    description="MiniMax-M2: sigmoid + expert bias (on the block), renormalised top-k",
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(
        routing=RouterSpec(
            score="sigmoid",
            selection_bias="e_score_correction_bias",
            params_on="ffn",
            renormalize=True,
            weights_dtype="float32",
            sorted=False,
        ),
    ),
)
