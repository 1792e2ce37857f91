"""route(): the router description applied, checked against each family's own router.

With no request, route() on a router's logits must give the router's own experts and
weights bit for bit. Bans, forces and a changed top-k are checked against a hand
re-routing of the family's forward: the family's own router code run on logits with the
banned expert's column at −∞ (and its selection bias at −∞), a forced expert's
selection bias at +∞, the router's ``top_k`` attribute changed; where a family has no
bias to force with, a per-token loop that follows the family's published rule.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F

from mechmoe.adapters.routing import route, selection_scores
from mechmoe.backends.base import read_router, write_router
from mechmoe.core.errors import InvalidInputError
from mechmoe.testing import DEFAULT_PROMPTS, tiny_model

PROMPTS = list(DEFAULT_PROMPTS)

#: every routing rule shipped: plain softmax, biased/grouped sigmoid, select-then-score
#: (softmax and sigmoid), SparseMixer
FAMILIES = (
    "olmoe",
    "mixtral",
    "deepseek_v3",
    "glm4_moe",
    "gpt_oss",
    "llama4",
    "granitemoe",
    "jamba",
    "phimoe",
    "deepseek_v2",
    "glm4_moe_lite",
    "dots1",
    "ernie4_5_moe",
    "minimax_m2",
    "hunyuan_v1_moe",
    "flex_olmo",
    "afmoe",
    "exaone_moe",
    "lfm2_moe",
    "granitemoehybrid",
)


@functools.cache
def _model(family: str):
    return tiny_model(family)


def _moe_layer(model) -> int:
    return model.dims.layer_kinds.index("moe")


def _router(model, li):
    return model.module(li, model.spec.moe.router)


def _inputs(model, rows: int = 96, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(rows, model.dims.d_model, generator=gen)


@contextlib.contextmanager
def _logit_column(router, expert: int, value: float):
    """Run the family's own router with expert ``expert``'s logit forced to ``value``:
    every routers' logits come from ``F.linear`` on its own weight."""
    original = F.linear
    # the router's own weight, or its linear's (HunYuan's wg, AFMoE's gate)
    weight = (
        next(m.weight for m in router.modules() if isinstance(m, torch.nn.Linear))
        if not hasattr(router, "weight")
        else router.weight
    )

    def linear(x, w, b=None):
        out = original(x, w, b)
        if w.shape == weight.shape and torch.equal(w, weight.to(w.dtype)):
            out = out.clone()
            out[..., expert] = value
        return out

    F.linear = linear
    try:
        yield
    finally:
        F.linear = original


@contextlib.contextmanager
def _bias(model, li, expert: int, value: float):
    bias = model.selection_bias(li)
    if bias is None:
        yield
        return
    saved = bias.detach().clone()
    with torch.no_grad():
        bias[expert] = value
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def _own(model, li, x):
    """The family's router on ``x``, read as (logits, weights, index)."""
    router = _router(model, li)
    with torch.no_grad():
        if model.spec.moe.routing.params_on == "ffn":  # the block passes its bias
            bias = model.selection_bias(li)
            try:
                return read_router(model, li, router(x, bias))
            except ValueError:  # AFMoE's router unpacks (batch, seq, d)
                return read_router(model, li, router(x[None], bias))
        return read_router(model, li, router(x))


def _route(model, li, logits, **request):
    k = request.pop("k", model.dims.top_k[li])
    return route(
        logits,
        model.routing_rule(li),
        bias=model.selection_bias(li),
        expert_scale=model.expert_scale(li),
        k=k,
        **request,
    )


def _table(weights, index, n_experts: int) -> torch.Tensor:
    out = torch.zeros((index.shape[0], n_experts), dtype=torch.float64)
    return out.scatter_(-1, index.long(), weights.double())


@pytest.mark.parametrize("family", FAMILIES)
def test_no_request_is_the_router_bit_for_bit(family):
    model = _model(family)
    for li, kind in enumerate(model.dims.layer_kinds):
        if kind != "moe":
            continue
        for seed in range(3):
            own = _own(model, li, _inputs(model, seed=seed))
            weights, index = _route(model, li, own.logits)
            assert torch.equal(index, own.index), (family, li)
            assert torch.equal(weights, own.weights), (family, li)
            assert weights.dtype == own.weights.dtype


def test_a_selection_bias_changes_the_choice_not_the_weights():
    model = _model("deepseek_v3")
    li = _moe_layer(model)
    own = _own(model, li, _inputs(model))
    rule = model.routing_rule(li)
    unbiased = route(own.logits, rule, k=model.dims.top_k[li])
    assert not torch.equal(unbiased[1], own.index)  # the tiny model's bias matters
    # the weights are the unbiased sigmoid scores of the chosen, renormalised and scaled
    scores = torch.sigmoid(own.logits.float()).gather(1, own.index)
    want = scores / (scores.sum(-1, keepdim=True) + 1e-20) * rule.scale
    torch.testing.assert_close(own.weights, want, atol=1e-6, rtol=0)
    # the capture's selection scores are score + bias, before the group mask
    sel = selection_scores(own.logits, rule, bias=model.selection_bias(li))
    torch.testing.assert_close(sel, torch.sigmoid(own.logits) + model.selection_bias(li))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_ban_equals_the_family_router_with_that_logit_at_minus_inf(family):
    model = _model(family)
    li = _moe_layer(model)
    router, x = _router(model, li), _inputs(model)
    own = _own(model, li, x)
    E = own.logits.shape[-1]
    banned = int(torch.bincount(own.index.flatten(), minlength=E).argmax())  # busiest
    weights, index = _route(model, li, own.logits, banned={banned})
    assert not (index == banned).any()
    with _logit_column(router, banned, float("-inf")), _bias(model, li, banned, float("-inf")):
        hand = _own(model, li, x)
    assert torch.equal(index.sort(-1).values, hand.index.sort(-1).values)
    torch.testing.assert_close(
        _table(weights, index, E), _table(hand.weights, hand.index, E), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_a_rerouted_block_equals_the_hand_rerouted_block(family):
    """The MoE block fed route()'s output (in the router's own format) computes what the
    family's block computes with the banned expert's logit at −∞."""
    model = _model(family)
    li = _moe_layer(model)
    router, block = _router(model, li), model.module(li, model.spec.ffn)
    x = _inputs(model, rows=12)[None]
    own = _own(model, li, x[0])
    banned = int(own.index[0, 0])

    def replace(mod, args, out):
        r = read_router(model, li, out)
        w, idx = _route(model, li, r.logits, banned={banned})
        return write_router(model, li, out, type(r)(r.logits, w, idx))

    handle = router.register_forward_hook(replace)
    try:
        with torch.no_grad():
            ours = block(x)
    finally:
        handle.remove()
    with (
        torch.no_grad(),
        _logit_column(router, banned, float("-inf")),
        _bias(model, li, banned, float("-inf")),
    ):
        hand = block(x)
    ours = ours[0] if isinstance(ours, tuple) else ours
    hand = hand[0] if isinstance(hand, tuple) else hand
    torch.testing.assert_close(ours, hand, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_top_k_equals_the_family_router_with_another_k(family):
    model = _model(family)
    li = _moe_layer(model)
    router, x = _router(model, li), _inputs(model)
    own = _own(model, li, x)
    k = model.dims.top_k[li] + 1
    weights, index = _route(model, li, own.logits, k=k)
    assert index.shape[-1] == k
    if model.spec.moe.routing.select == "sparsemixer":
        hand_w, hand_i = _sparsemixer_by_hand(own.logits, model.routing_rule(li).band, k, ())
    else:
        saved = router.top_k
        router.top_k = k
        try:
            hand = _own(model, li, x) if "table" not in model.spec.moe.routing.returns else None
            if hand is None:  # Llama-4's table: read at the k the rule chooses
                with torch.no_grad():
                    table, _ = router(x)
                hand_i = torch.topk(own.logits, k, dim=-1)[1]
                hand_w = table.gather(-1, hand_i)
            else:
                hand_w, hand_i = hand.weights, hand.index
        finally:
            router.top_k = saved
    E = own.logits.shape[-1]
    assert torch.equal(index.sort(-1).values, hand_i.sort(-1).values)
    torch.testing.assert_close(
        _table(weights, index, E), _table(hand_w, hand_i, E), atol=1e-6, rtol=0
    )


# ---- forcing -------------------------------------------------------------------------------


def _forced_by_hand(model, li, logits, forced: int):
    """A per-token reference of a forced expert under the family's own rule: the forced
    expert takes a slot, the rest are the family's choice among the others, and the
    weights are the family's weights of exactly those experts."""
    rule, k = model.routing_rule(li), model.dims.top_k[li]
    z = logits.double()
    rows_w, rows_i = [], []
    for row in z:
        if rule.select == "sparsemixer":
            w, i = _sparsemixer_by_hand(row[None], rule.band, k, (forced,))
            rows_w.append(w[0])
            rows_i.append(i[0])
            continue
        if rule.select == "logits":
            others = [e for e in torch.argsort(row, descending=True).tolist() if e != forced]
            chosen = [forced, *others[: k - 1]]
            picked = row[chosen]
            w = torch.softmax(picked, 0) if rule.score == "softmax" else torch.sigmoid(picked)
        else:
            p = torch.softmax(row, 0) if rule.score == "softmax" else torch.sigmoid(row)
            choice = p.clone()
            bias = model.selection_bias(li)
            if bias is not None:
                choice = choice + bias.double()
            if rule.n_group:
                G = rule.n_group
                groups = choice.view(G, -1)
                gscore = (
                    groups.topk(2).values.sum(-1)
                    if rule.group_score == "top2_sum"
                    else groups.max(-1).values
                )
                fgroup = forced // groups.shape[1]
                gscore[fgroup] = float("inf")
                kept = torch.topk(gscore, rule.topk_group).indices.tolist()
                mask = torch.zeros(G, dtype=torch.bool)
                mask[kept] = True
                choice = choice.masked_fill(~mask.repeat_interleave(groups.shape[1]), float("-inf"))
            order = [e for e in torch.argsort(choice, descending=True).tolist() if e != forced]
            chosen = [forced, *order[: k - 1]]
            w = p[chosen]
            if rule.renormalize:
                total = w.sum()
                if rule.renorm_min is not None:  # ERNIE-4.5: the sum clamped from below
                    total = total.clamp(min=rule.renorm_min)
                w = w / (total + rule.renorm_eps)
            if rule.scale is not None:
                w = w * rule.scale
        rows_w.append(w)
        rows_i.append(torch.tensor(chosen))
    return torch.stack(rows_w), torch.stack(rows_i)


def _sparsemixer_by_hand(logits, band, k, forced):
    """SparseMixer in eval, token by token, from its definition (forced experts first)."""
    out_w, out_i = [], []
    for row in logits.double():
        remaining = row.clone()
        ws, ids = [], []
        for r in range(k):
            c = forced[r] if r < len(forced) else int(torch.argmax(remaining))
            thr = row[c]
            keep = [
                j
                for j in range(row.numel())
                if remaining[j] > float("-inf")
                and not ((thr - row[j]) / max(abs(float(row[j])), float(thr)) > band)
            ]
            probs = torch.softmax(remaining[keep], 0)
            ws.append(probs[keep.index(c)])
            ids.append(c)
            remaining[c] = float("-inf")
        out_w.append(torch.stack(ws))
        out_i.append(torch.tensor(ids))
    return torch.stack(out_w), torch.stack(out_i)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_forced_expert_takes_a_slot_under_the_family_rule(family):
    model = _model(family)
    li = _moe_layer(model)
    x = _inputs(model, rows=40)
    own = _own(model, li, x)
    E = own.logits.shape[-1]
    forced = int(torch.bincount(own.index.flatten(), minlength=E).argmin())  # rarest
    weights, index = _route(model, li, own.logits, forced={forced})
    assert (index == forced).any(-1).all()
    hand_w, hand_i = _forced_by_hand(model, li, own.logits, forced)
    assert torch.equal(index.sort(-1).values, hand_i.sort(-1).values)
    torch.testing.assert_close(
        _table(weights, index, E), _table(hand_w, hand_i, E), atol=1e-6, rtol=0
    )
    if model.selection_bias(li) is not None:  # the family's own code, bias at +∞
        with _bias(model, li, forced, float("inf")):
            hand = _own(model, li, x)
        assert torch.equal(index.sort(-1).values, hand.index.sort(-1).values)
        torch.testing.assert_close(
            _table(weights, index, E), _table(hand.weights, hand.index, E), atol=1e-6, rtol=0
        )


def test_scales_multiply_the_final_weights():
    model = _model("deepseek_v3")
    li = _moe_layer(model)
    own = _own(model, li, _inputs(model))
    e = int(own.index[0, 0])
    weights, index = _route(model, li, own.logits, scales={e: 0.5})
    assert torch.equal(index, own.index)
    want = torch.where(own.index == e, own.weights * 0.5, own.weights)
    torch.testing.assert_close(weights, want)


def test_impossible_requests_are_refused():
    model = _model("deepseek_v3")
    li = _moe_layer(model)
    logits = _own(model, li, _inputs(model, rows=4)).logits
    with pytest.raises(InvalidInputError, match="both banned and forced"):
        _route(model, li, logits, banned={1}, forced={1})
    with pytest.raises(InvalidInputError, match="4 experts forced but top-k is 3"):
        _route(model, li, logits, forced={0, 1, 2, 3})
    with pytest.raises(InvalidInputError, match="out of range"):
        _route(model, li, logits, banned={99})
    # 2 groups of 3 experts are kept: 7 experts per token cannot be chosen
    with pytest.raises(InvalidInputError, match="groups"):
        _route(model, li, logits, k=7)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_request_is_the_router_bit_for_bit_in_bfloat16(family):
    """The dtypes are part of the rule: float32 scores, weights in the model's dtype or
    float32, as each family's router computes them."""
    import copy

    from mechmoe.model import Model

    model = _model(family)
    m16 = Model.from_hf(
        copy.deepcopy(model.hf).to(torch.bfloat16), model.tokenizer, spec=model.spec
    )
    li = _moe_layer(m16)
    own = _own(m16, li, _inputs(m16, rows=200).to(torch.bfloat16))
    weights, index = _route(m16, li, own.logits)
    assert torch.equal(index, own.index) and torch.equal(weights, own.weights)
    assert weights.dtype == own.weights.dtype


# ---- routing values in a pass: the plan's request goes through the same route() --------------


def _pass_logits(model, interventions=None):
    cap = model.capture(PROMPTS, interventions=interventions)
    return cap.logits[:, 0].double()


@pytest.mark.parametrize("family", FAMILIES)
def test_routing_values_in_a_pass_equal_the_hand_rerouted_model(family):
    """BanExperts / SetTopK / ForceExperts through ``model.capture`` (merged request →
    ``Model.reroute`` → route()) equal the whole model run with the family's own router
    code changed by hand: the banned logit at −∞, another ``top_k``, a forced expert's
    selection bias at +∞."""
    from mechmoe.core.interventions import BanExperts, ForceExperts, SetTopK

    model = _model(family)
    li = _moe_layer(model)
    router = _router(model, li)
    base = model.capture(PROMPTS)
    chosen = base.layers[li].expert_idx.flatten()
    banned = int(torch.bincount(chosen, minlength=model.dims.n_experts[li]).argmax())
    ours = _pass_logits(model, BanExperts({li: [banned]}))
    with _logit_column(router, banned, float("-inf")), _bias(model, li, banned, float("-inf")):
        hand = _pass_logits(model)
    assert not torch.allclose(ours, base.logits[:, 0].double(), atol=1e-4)  # it did something
    torch.testing.assert_close(ours, hand, atol=1e-5, rtol=0)
    if model.spec.moe.routing.select != "sparsemixer":  # PhiMoE's top-2 is hard-coded
        k = model.dims.top_k[li] + 1
        ours = _pass_logits(model, SetTopK(k, layers=[li]))
        saved, router.top_k = router.top_k, k
        try:
            hand = _pass_logits(model)
        finally:
            router.top_k = saved
        torch.testing.assert_close(ours, hand, atol=1e-5, rtol=0)
    if model.selection_bias(li) is not None:
        forced = int(torch.bincount(chosen, minlength=model.dims.n_experts[li]).argmin())
        ours = _pass_logits(model, ForceExperts({li: [forced]}))
        with _bias(model, li, forced, float("inf")):
            hand = _pass_logits(model)
        torch.testing.assert_close(ours, hand, atol=1e-5, rtol=0)
