"""Gated-LPI on real weights: the neurons that most help a model name capitals, and the
tokens each one promotes.

    python examples/top_neurons.py              # SmolLM2-135M-Instruct (installed by the set-up)
    python examples/top_neurons.py tiny:olmoe   # any model mechmoe loads

A neuron's score is what its output adds to the log-probability of the model's predicted
token, read through the frozen final norm, averaged over the prompts (docs/attribution.md).
What the neuron writes, ``w_down[:, n]``, read through the final norm's weight and the
unembedding, is the set of tokens it pushes up wherever it fires: its score is about these
prompts, its promoted tokens about every prompt. On SmolLM2 the top neurons sit in the last
layer, and several promote punctuation and function words: they sharpen the prediction
rather than store the fact, which is what a direct-effect score finds at the last layer.
"""

from __future__ import annotations

import sys

import torch

import mechmoe
from mechmoe.probes import load_probe


def top_neurons(model: mechmoe.Model, prompts: list[str], n: int = 8) -> list[dict]:
    scores = mechmoe.attribute(model, prompts, level="neuron")["score"]
    flat = scores.stack(unit=("layer", "expert", "neuron"))
    best = flat.sortby(flat, ascending=False)[:n]
    rows = []
    gamma = model.final_norm.weight
    for (layer, expert, neuron), score in zip(best["unit"].values, best.values, strict=True):
        column = model.ffn_weights(int(layer)).w_down[int(expert), :, int(neuron)]
        direction = column if gamma is None else column * gamma
        logits = model.W_U.float() @ direction.float()
        tokens = [model.tokenizer.decode([int(t)]) for t in torch.topk(logits, 5).indices]
        rows.append(
            {
                "layer": int(layer),
                "expert": int(expert),
                "neuron": int(neuron),
                "score": float(score),
                "promotes": tokens,
            }
        )
    return rows


def main(name: str = "smollm2", n_prompts: int = 16) -> list[dict]:
    model = mechmoe.load(name)
    prompts = list(load_probe("country_capital_city").head(n_prompts).prompts)
    rows = top_neurons(model, prompts)
    print(f"{model.name}: top neurons by Gated-LPI over {len(prompts)} capital prompts")
    print(f"{'layer':>5} {'expert':>6} {'neuron':>6} {'score':>9}  promotes")
    for r in rows:
        promoted = ", ".join(repr(t) for t in r["promotes"])
        print(f"{r['layer']:>5} {r['expert']:>6} {r['neuron']:>6} {r['score']:>9.4f}  {promoted}")
    return rows


if __name__ == "__main__":
    main(*sys.argv[1:2])
