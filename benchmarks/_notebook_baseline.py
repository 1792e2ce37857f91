"""A faithful re-implementation of the published notebook's Gated-LPI loop (the baseline).

The notebook scores one prompt at a time: a forward pass, then for each layer and each
expert the prompt chose, it adds every neuron's vector ``g · m_k · W_down[:, k]`` to the
residual, pushes that batch of vectors through the final norm (RMS form, eps 1e-6, σ
frozen at the final residual) and the unembedding, takes a softmax over the vocabulary
and reads the target's log-probability. Nothing is shared between prompts: the
``(neurons × d) @ (d × vocab)`` product is formed again for every prompt.

This is the cost structure we compare against; the numbers it produces equal
``attribute(..., reference_compat=True)`` (checked by the benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


@torch.no_grad()
def notebook_scores(model, prompts: Sequence[str]) -> np.ndarray:
    """Per-prompt Gated-LPI, ``(prompt, layer, expert, neuron)``, NaN where not scored."""
    d = model.dims
    out = np.full(
        (len(prompts), d.n_layers, max(d.n_experts), max(d.d_ffn)), np.nan, dtype=np.float32
    )
    W_U = model.W_U.detach().float()
    gamma = model.final_norm.weight
    gamma = torch.ones(d.d_model) if gamma is None else gamma.detach().float()
    for b, prompt in enumerate(prompts):
        cap = model.capture([prompt])
        h = cap.final_resid[0, 0].float()
        sigma = torch.sqrt(h.pow(2).mean() + 1e-6)
        target = int(cap.logits[0, 0].argmax())
        for li, lc in enumerate(cap.layers):
            r = lc.resid_mid[0, 0].float()
            base = torch.log_softmax((gamma * r / sigma) @ W_U.T, dim=-1)[target]
            w_down = model.ffn_weights(li).w_down
            for s in range(lc.expert_idx.shape[-1]):
                e = int(lc.expert_idx[0, 0, s])
                coef = lc.expert_gate[0, 0, s].float() * lc.acts[0, 0, s].float()  # (neuron,)
                vectors = r[None, :] + coef[:, None] * w_down[e].detach().float().T  # (neuron, d)
                logits = (gamma * vectors / sigma) @ W_U.T  # (neuron, vocab)
                probs = torch.softmax(logits, dim=-1)
                lpi = torch.log(probs[:, target]) - base
                out[b, li, e, : lpi.shape[0]] = lpi.numpy()
    return out
