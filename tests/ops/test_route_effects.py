"""route_effects against the same comparison done by hand on plain HF forwards.

The reference runs a deep copy of the HF model (float64) whose routers are replaced by
routing written out here (logits, a bias of −inf on banned experts, softmax, top-k,
renormalisation where the model does it), records which experts each router chose at
the last token, and computes the next-token distributions, KL, top-n and the top-1
change with numpy. Nothing of mechmoe's capture or interventions is used.
"""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechmoe.core.errors import InvalidInputError
from mechmoe.core.interventions import BanExperts, MaskHeads, SetTopK
from mechmoe.ops.route_effects import route_effects
from mechmoe.testing import DEFAULT_PROMPTS, tiny_model

PROMPTS = list(DEFAULT_PROMPTS)  # different lengths: the batch is left-padded


@pytest.fixture(scope="module", params=["olmoe", "mixtral"])
def model(request):
    model = tiny_model(request.param)
    model.hf.double()
    return model


def _route_by_hand(router, *, k: int, renorm: bool, bias: torch.Tensor | None, chosen: list):
    """Replace ``router.forward``; append each call's choice of experts to ``chosen``."""

    def forward(self, hidden_states):
        x = hidden_states.reshape(-1, self.weight.shape[1])
        logits = F.linear(x, self.weight)
        z = logits if bias is None else logits + bias
        probs = torch.softmax(z.float(), dim=-1)
        index = torch.argsort(probs, dim=-1, descending=True, stable=True)[:, :k]
        weights = probs.gather(-1, index)
        if renorm:
            weights = weights / weights.sum(-1, keepdim=True)
        chosen.append(index)  # (token, k): the batch's tokens in (prompt, position) order
        return logits, weights.to(logits.dtype), index

    router.forward = types.MethodType(forward, router)


def _by_hand(model, *, k: int | None = None, ban: dict[int, list[int]] | None = None):
    """Last-token log-probabilities (float64 numpy) and each layer's last-token expert sets."""
    hf = copy.deepcopy(model.hf)
    chosen: list[list[torch.Tensor]] = []
    for layer, mod in enumerate(hf.model.layers):
        n_experts = model.dims.n_experts[layer]
        bias = None
        if ban and layer in ban:
            bias = torch.zeros(n_experts, dtype=torch.float64)
            bias[ban[layer]] = float("-inf")
        calls: list[torch.Tensor] = []
        chosen.append(calls)
        _route_by_hand(
            mod.mlp.gate,
            k=k or model.dims.top_k[layer],
            renorm=model.renormalizes(),
            bias=bias,
            chosen=calls,
        )
    batch = model.tokenize(PROMPTS)
    with torch.no_grad():
        logits = hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).logits[:, -1]
    z = logits.double().numpy()
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    B, S = batch.input_ids.shape
    last = [c[0].reshape(B, S, -1)[:, -1] for c in chosen]  # one forward: one call a layer
    sets = [[set(idx[b].tolist()) for idx in last] for b in range(B)]
    return logp, sets


def _compare(ds, base, routed, base_sets, routed_sets, n_top=5):
    p = np.exp(base)
    kl = (p * (base - routed)).sum(-1)
    np.testing.assert_allclose(ds["kl"].values, np.maximum(kl, 0), rtol=1e-5, atol=1e-9)
    top1 = base.argmax(-1)
    rows = np.arange(len(top1))
    np.testing.assert_allclose(
        ds["delta_logprob_top1"].values, routed[rows, top1] - base[rows, top1], atol=1e-6
    )
    assert ds["top1_kept"].values.tolist() == (routed.argmax(-1) == top1).tolist()
    for name, lp in (("base", base), ("routed", routed)):
        order = np.argsort(-lp, axis=-1, kind="stable")[:, :n_top]
        assert ds["top_token"].sel(condition=name).values.tolist() == order.tolist()
        np.testing.assert_allclose(
            ds["top_logprob"].sel(condition=name).values,
            np.take_along_axis(lp, order, -1),
            atol=1e-6,
        )
    changed = [
        np.mean([a != b for a, b in zip(bs, rs, strict=True)])
        for bs, rs in zip(base_sets, routed_sets, strict=True)
    ]
    np.testing.assert_allclose(ds["routing_changed"].values, changed)


def test_ban_equals_routing_by_hand(model):
    ban = {0: [1, 3], 1: [0]}
    ds = route_effects(model, PROMPTS, BanExperts(ban))
    base, base_sets = _by_hand(model)
    routed, routed_sets = _by_hand(model, ban=ban)
    _compare(ds, base, routed, base_sets, routed_sets)
    assert float(ds["kl"].max()) > 1e-6  # the ban changed something
    # a prompt whose last token chose no banned expert keeps its sets
    assert ds["routing_changed"].values.max() > 0
    assert ds.attrs["n_top"] == 5 and "BanExperts" in ds.attrs["interventions"]
    assert ds.attrs["model"] == model.name and ds.attrs["probe_items"] == len(PROMPTS)


def test_another_top_k_reroutes_every_layer(model):
    ds = route_effects(model, PROMPTS, SetTopK(3), n_top=3, batch_size=2)
    base, base_sets = _by_hand(model)
    routed, routed_sets = _by_hand(model, k=3)
    _compare(ds, base, routed, base_sets, routed_sets, n_top=3)
    assert ds["routing_changed"].values.tolist() == [1.0] * len(PROMPTS)


def test_dense_model_has_no_rerouting_and_head_masks_work():
    model = tiny_model("llama")
    ds = route_effects(model, PROMPTS[:2], MaskHeads([(0, 1)]))
    assert ds["routing_changed"].values.tolist() == [0.0, 0.0]
    assert float(ds["kl"].min()) > 0


def test_bad_calls():
    model = tiny_model("olmoe")
    with pytest.raises(InvalidInputError, match="no interventions given"):
        route_effects(model, PROMPTS, [])
    with pytest.raises(InvalidInputError, match="no prompts"):
        route_effects(model, [], BanExperts({0: [1]}))
    with pytest.raises(InvalidInputError, match="expert 9 at layer 0 is out of range"):
        route_effects(model, PROMPTS, BanExperts({0: [9]}))
