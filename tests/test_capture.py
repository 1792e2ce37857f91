from __future__ import annotations

import dataclasses

import pytest
import torch

from mechmoe.core.errors import InvalidInputError
from mechmoe.testing import DEFAULT_PROMPTS, MOE_FAMILIES, TINY_FAMILIES, tiny_model

FIELDS = ("resid_pre", "heads", "attn_out", "resid_mid", "ffn_in", "acts", "ffn_out", "expert_gate")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_left_padding_matches_each_prompt_alone(family):
    model = tiny_model(family)
    together = model.capture(DEFAULT_PROMPTS)
    assert together.batch.attention_mask.sum(-1).unique().numel() > 1  # really padded
    for i, prompt in enumerate(DEFAULT_PROMPTS):
        alone = model.capture([prompt])
        torch.testing.assert_close(together.logits[i], alone.logits[0], atol=1e-5, rtol=0)
        for lc_t, lc_a in zip(together.layers, alone.layers, strict=True):
            assert torch.equal(lc_t.expert_idx[i], lc_a.expert_idx[0])
            for name in FIELDS:
                # rtol: float32 rounding of residuals that grow large without a pre-norm
                # (FlexOlmo's OLMo-2 layer: |x| ≈ 16 at the last layer)
                torch.testing.assert_close(
                    getattr(lc_t, name)[i], getattr(lc_a, name)[0], atol=1e-5, rtol=1e-6
                )


def _plain_softmax_topk(family: str) -> bool:
    moe = tiny_model(family).spec.moe
    r = moe.routing
    return (r.score, r.select, r.selection_bias, r.groups, r.scale) == (
        "softmax",
        "score",
        None,
        None,
        None,
    )


# Families with other rules are checked against their own routers in tests/adapters.
@pytest.mark.parametrize("family", [f for f in MOE_FAMILIES if _plain_softmax_topk(f)])
def test_gates_follow_the_routing_rule(family):
    model = tiny_model(family)
    cap = model.capture(DEFAULT_PROMPTS)
    for li, lc in enumerate(cap.layers):
        if lc.kind != "moe":
            assert model.dims.layer_kinds[li] == "dense"
            continue
        probs = torch.softmax(lc.router_logits.float(), dim=-1)
        top = probs.topk(model.dims.top_k[li], dim=-1)
        assert torch.equal(top.indices, lc.expert_idx)
        want = top.values / top.values.sum(-1, keepdim=True) if model.renormalizes() else top.values
        torch.testing.assert_close(lc.expert_gate, want, atol=1e-6, rtol=0)


def test_renormalisation_flags():
    assert tiny_model("mixtral").renormalizes()
    assert tiny_model("qwen3_moe").renormalizes()
    assert not tiny_model("olmoe").renormalizes()
    assert not tiny_model("llama").renormalizes()


def test_mixed_dense_and_moe_layers():
    model = tiny_model("qwen2_moe")
    assert model.dims.layer_kinds == ("moe", "dense", "moe")
    cap = model.capture(["The capital of France is"])
    assert cap.layers[1].router_logits is None and cap.layers[1].acts.shape[2] == 1
    assert cap.layers[0].shared_acts is not None and cap.layers[0].shared_gate is not None


def test_activations_match_a_hook_on_the_real_experts():
    """Recomputed neuron activations equal what the model's own MLP computes."""
    model = tiny_model("llama")
    seen = {}
    mlp = model.hf.model.layers[1].mlp

    def keep_input(module, inputs, output):
        seen["m"] = inputs[0]

    handle = mlp.down_proj.register_forward_hook(keep_input)
    try:
        cap = model.capture(["The capital of France is"])
    finally:
        handle.remove()
    torch.testing.assert_close(cap.layers[1].acts[0, 0, 0], seen["m"][0, -1], atol=1e-6, rtol=0)


def test_positions_all_and_explicit():
    model = tiny_model("olmoe")
    prompts = ["The capital of France is", "Tokyo is"]
    full = model.capture(prompts, positions="all")
    lengths = full.batch.attention_mask.sum(-1)
    assert torch.equal(full.batch.valid.sum(-1), lengths)
    picked = model.capture(prompts, positions=[0, -1])
    T = full.batch.seq_len
    for b in range(2):
        first = T - int(lengths[b])
        torch.testing.assert_close(picked.logits[b, 0], full.logits[b, first], atol=1e-6, rtol=0)
        torch.testing.assert_close(picked.logits[b, 1], full.logits[b, T - 1], atol=1e-6, rtol=0)


def test_capture_to_xarray_is_labeled():
    model = tiny_model("mixtral")
    ds = model.capture(DEFAULT_PROMPTS[:2]).to_xarray()
    assert ds["resid_mid"].dims == ("prompt", "position", "layer", "d_model")
    assert list(ds["prompt"].values) == list(DEFAULT_PROMPTS[:2])
    assert ds.attrs["adapter"] == "mixtral"


@pytest.mark.parametrize(
    ("prompts", "kwargs", "match"),
    [
        (["ok prompt", "   "], {}, "prompt 1 is empty"),
        ([], {}, "no prompts"),
        (["The capital"], {"positions": [7]}, "position 7 is outside prompt 0"),
        (["The capital"], {"positions": "middle"}, "positions='middle'"),
    ],
)
def test_bad_prompts(prompts, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        tiny_model("llama").capture(prompts, **kwargs)


def test_prompt_longer_than_context_is_named():
    model = tiny_model("llama")
    with pytest.raises(
        InvalidInputError, match=r"prompt 1 .* more than the model's context of 128"
    ):
        model.capture(["short", "The capital of France is Paris. " * 40])


def test_capture_is_frozen():
    cap = tiny_model("llama").capture(["The capital"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cap.logits = None  # type: ignore[misc]


@pytest.mark.parametrize("family", ["olmoe", "llama", "gpt2"])
def test_logits_only_at_captured_positions_equal_the_full_forward(family):
    # The pass computes logits only at the captured positions (logits_to_keep); read
    # back per prompt they must equal a plain forward's at those positions, including
    # positions that differ between left-padded prompts.
    model = tiny_model(family)
    prompts = ["The capital of France is", "Tokyo is", "One two three four five six"]
    cap = model.capture(prompts, positions=[0, 2, -1])
    with torch.no_grad():
        full = model.hf_logits(cap.batch)
    pos = cap.batch.positions
    for b in range(len(prompts)):
        for j in range(pos.shape[1]):
            torch.testing.assert_close(
                cap.logits[b, j], full[b, int(pos[b, j])], atol=1e-5, rtol=1e-5
            )
