"""Small synthetic stores in the trajectory store layout, for tests, examples and docs.

The values are random (seeded), shaped like a real sweep's: an MoE run whose few
"backbone" neurons gain steadily while the rest drift, or a dense run (one expert, no
routing record) whose gains are spread out. They exercise the statistics; they are not
measurements of any model.

>>> ds = toy_store(moe=True)
>>> ds["neuron_score"].dims
('step', 'layer', 'expert', 'neuron')
>>> "routing_choice" in toy_store(moe=False)
False
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from mechmoe._types import (
    EXPERT,
    HEAD,
    LAYER,
    N_MASKED,
    NEURON,
    RELATION,
    SEED,
    SLOT,
    STEP,
    TOKEN,
    K,
)


def toy_store(
    *,
    moe: bool = True,
    steps: tuple[int, ...] = (0, 100, 200, 300, 400),
    n_layers: int = 2,
    n_experts: int = 4,
    n_neurons: int = 16,
    n_heads: int = 4,
    n_tokens: int = 24,
    top_k: int = 2,
    seed: int = 0,
) -> xr.Dataset:
    """A Dataset laid out like ``mechmoe.trajectory.open_store``'s (see docs/trajectories.md)."""
    rng = np.random.default_rng(seed)
    n_experts = n_experts if moe else 1
    top_k = top_k if moe else 1
    n_steps = len(steps)
    shape = (n_layers, n_experts, n_neurons)
    growth = np.zeros(shape)
    if moe:
        flat = growth.reshape(-1)
        flat[rng.choice(flat.size, max(1, flat.size // 50), replace=False)] = 1.0
    else:
        growth += rng.uniform(0.0, 0.2, size=shape)
    t = np.linspace(0.0, 1.0, n_steps)[:, None, None, None]
    # a profile acquired early and kept (MoE) or one swamped by per-step churn (dense)
    profile = rng.normal(0.0, 0.3, size=shape) * np.minimum(1.0, 3.0 * t)
    noise = rng.normal(0.0, 0.02 if moe else 0.3, size=(n_steps, *shape))
    score = growth[None] * t + profile + noise
    n_prompts = 6
    n_chosen = (
        # early on some experts see no probe prompt at all; later every one sees some
        rng.integers(0, n_prompts + 1, size=(n_steps, n_layers, n_experts)).clip(
            np.minimum(np.arange(n_steps), 1)[:, None, None], None
        )
        if moe
        else np.full((n_steps, n_layers, n_experts), n_prompts)
    )
    score = np.where(n_chosen[..., None] > 0, score, 0.0)
    relations = np.array(["country_capital_city", "adj_antonym", "word_first_letter"])
    coords = {
        STEP: np.asarray(steps, dtype=np.int64),
        "tokens": (STEP, np.asarray(steps, dtype=np.float64) * 4.19e6),
        "revision": (STEP, [f"step{s}-tokens{round(s * 4.19e-3)}B" for s in steps]),
        "weights_hash": (STEP, [f"{seed:02d}{i:06x}" for i in range(n_steps)]),
        LAYER: np.arange(n_layers),
        EXPERT: np.arange(n_experts),
        NEURON: np.arange(n_neurons),
        HEAD: np.arange(n_heads),
        RELATION: relations,
        K: [1, 10],
        N_MASKED: [1, 5, 10],
        SEED: [0, 1, 2],
    }
    hit10 = np.clip(
        np.linspace(0.1, 0.8, n_steps)[:, None] + rng.normal(0, 0.02, (n_steps, 3)), 0, 1
    )
    hit = np.stack([hit10 * 0.5, hit10], axis=-1)
    base = hit10.mean(axis=1)
    frac_top = np.array([0.95, 0.9, 0.85]) if moe else np.array([0.8, 0.5, 0.3])
    hit_top = base[:, None] * frac_top[None, :]
    hit_rand = base[:, None, None] * (0.97 + rng.uniform(-0.02, 0.02, (n_steps, 3, 3)))
    load = rng.dirichlet(np.ones(n_experts), size=(n_steps, n_layers))
    data = {
        "neuron_score": ((STEP, LAYER, EXPERT, NEURON), score),
        "neuron_n_chosen": ((STEP, LAYER, EXPERT), n_chosen.astype(np.int64)),
        "expert_score": ((STEP, LAYER, EXPERT), score.mean(axis=-1)),
        "expert_n_chosen": ((STEP, LAYER, EXPERT), n_chosen.astype(np.int64)),
        "head_score": ((STEP, LAYER, HEAD), rng.normal(0, 0.1, (n_steps, n_layers, n_heads))),
        "hit": ((STEP, RELATION, K), hit),
        "mrr": ((STEP, RELATION), hit10 * 0.6),
        "robust_hit_base": ((STEP,), base),
        "robust_hit_top": ((STEP, N_MASKED), hit_top),
        "robust_hit_random": ((STEP, N_MASKED, SEED), hit_rand),
        "robust_drop_top": ((STEP, N_MASKED), 1 - hit_top / base[:, None]),
        "robust_drop_random": ((STEP, N_MASKED, SEED), 1 - hit_rand / base[:, None, None]),
        "expert_load": ((STEP, LAYER, EXPERT), load),
    }
    if moe:
        final = np.argsort(rng.random((n_tokens, n_layers, n_experts)), axis=-1)[..., :top_k]
        choice = np.empty((n_steps, n_tokens, n_layers, top_k), dtype=np.int64)
        for i in range(n_steps):
            keep = rng.random((n_tokens, n_layers)) < (i + 1) / n_steps
            other = np.argsort(rng.random((n_tokens, n_layers, n_experts)), axis=-1)[..., :top_k]
            choice[i] = np.where(keep[..., None], final, other)
        data["routing_choice"] = ((STEP, TOKEN, LAYER, SLOT), choice)
        coords["token_id"] = (TOKEN, rng.integers(0, 8, n_tokens).astype(np.int64))
        coords["token_relation"] = (TOKEN, relations[np.arange(n_tokens) % 3])
        coords["token_prompt"] = (TOKEN, (np.arange(n_tokens) // 4).astype(np.int64))
    ds = xr.Dataset(data, coords=coords)
    ds["robust_drop_top"].attrs["k"] = 10
    ds.attrs = {
        "model": "toy-moe" if moe else "toy-dense",
        "probe": "toy",
        "is_moe": int(moe),
        "top_k": int(top_k),
        "n_experts": int(n_experts),
    }
    return ds


__all__ = ["toy_store"]
