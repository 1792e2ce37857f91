"""The routing request and its merge, third-party routing values, and the routing rule.

Every routing value states per-layer :class:`RoutingRequest` values; a plan merges them,
checks the merged requests with one function, and the pass hands each MoE layer's merged
request once to ``model.reroute`` (the rule in :mod:`mechmoe.adapters.routing`). The
third-party values below are written only against the public base
(:class:`RoutingEdit`), and must merge and be checked exactly like the built-in ones.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping

import pytest
import torch

import mechmoe
from mechmoe.adapters.routing import RoutingRule, reroute, routing_rule
from mechmoe.core.edits import SITES
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.interventions import (
    BanExperts,
    ForceExperts,
    Intervention,
    MaskHeads,
    RoutingEdit,
    RoutingRequest,
    ScaleGates,
    ScaleNeurons,
    SetTopK,
    ZeroExperts,
    ZeroNeurons,
    check_request,
    compose,
)
from mechmoe.core.interventions.checks import moe_layers
from mechmoe.core.types import ModelView, RouterOutput
from mechmoe.testing import DEFAULT_PROMPTS, tiny_model

PROMPTS = list(DEFAULT_PROMPTS)
MOE = ("olmoe", "mixtral", "qwen2_moe")


class BanOddExperts(RoutingEdit):
    """Third-party: ban the odd-numbered experts of every MoE layer (needs the model)."""

    def requests(self, model: ModelView | None) -> Mapping[int | None, RoutingRequest]:
        if model is None:
            return {}
        return {
            la: RoutingRequest(banned=range(1, model.dims.n_experts[la], 2))
            for la in moe_layers(model)
        }

    def __repr__(self) -> str:
        return "BanOddExperts()"


@dataclasses.dataclass(frozen=True)
class OnlyExpert(RoutingEdit):
    """Third-party: route every token of ``layer`` to ``expert`` alone (known without a model)."""

    layer: int
    expert: int

    def requests(self, model: ModelView | None) -> Mapping[int | None, RoutingRequest]:
        return {self.layer: RoutingRequest(forced=[self.expert], k=1)}


def odd(model, layer: int) -> list[int]:
    return list(range(1, model.dims.n_experts[layer], 2))


def assert_same_capture(a, b) -> None:
    assert torch.equal(a.logits, b.logits)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert torch.equal(la.expert_idx, lb.expert_idx)
        assert torch.equal(la.expert_gate, lb.expert_gate)


@pytest.fixture(scope="module", params=MOE)
def moe_model(request):
    return tiny_model(request.param)


def no_forward(model):
    calls: list[int] = []
    hook = model.hf.get_input_embeddings().register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, hook


# ---- third-party routing values join the merge and the checks ---------------------------


def test_third_party_edit_merges_with_built_ins_bit_for_bit(moe_model):
    """BanOddExperts + built-ins routes exactly as the same bans written as BanExperts."""
    moe = moe_layers(moe_model)
    la = moe[-1]
    bans = BanExperts({m: odd(moe_model, m) for m in moe})
    gates = ScaleGates({la: {0: 0.5, 2: 3.0}})
    force = ForceExperts({la: [2]})
    ours = moe_model.capture(
        PROMPTS, positions="all", interventions=BanOddExperts() + gates + force
    )
    ref = moe_model.capture(PROMPTS, positions="all", interventions=bans + gates + force)
    assert_same_capture(ours, ref)
    for m in moe:
        chosen = set(ours.layers[m].expert_idx.flatten().tolist())
        assert not chosen & set(odd(moe_model, m)) and chosen
    assert (ours.layers[la].expert_idx == 2).any(-1).all()
    # order-free, and a plain list means the same as the plan
    again = moe_model.capture(
        PROMPTS, positions="all", interventions=[force, gates, BanOddExperts()]
    )
    assert_same_capture(again, ref)


def test_a_contradiction_a_third_party_edit_causes_is_refused_before_the_pass(moe_model):
    la = moe_layers(moe_model)[0]
    n = moe_model.dims.n_experts[la]
    cases = [
        (
            BanOddExperts() + ForceExperts({la: [1]}),
            f"layer {la}: expert 1 is both banned and forced",
        ),
        (
            ForceExperts({la: [1]}) + BanOddExperts(),
            f"layer {la}: expert 1 is both banned and forced",
        ),
        (
            BanOddExperts() + SetTopK(n // 2 + 1),
            f"{n // 2} of {n} experts banned leaves fewer than top-k={n // 2 + 1}",
        ),
    ]
    for plan, message in cases:
        calls, hook = no_forward(moe_model)
        try:
            with pytest.raises(InvalidInputError, match=message):
                moe_model.capture(PROMPTS, interventions=plan)
        finally:
            hook.remove()
        assert not calls


def test_third_party_requests_known_without_a_model_are_checked_at_composition():
    with pytest.raises(InvalidInputError, match="layer 0: top-k set to both 1 and 2"):
        OnlyExpert(0, 2) + SetTopK(2, layers=[0])
    with pytest.raises(InvalidInputError, match="layer 0: expert 2 is both banned and forced"):
        BanExperts({0: [2]}) + OnlyExpert(0, 2)
    with pytest.raises(InvalidInputError, match="layer 1: top-k set to both 1 and 3"):
        compose(OnlyExpert(1, 0), [SetTopK(3, layers=[1])])
    OnlyExpert(0, 2) + SetTopK(2, layers=[1])  # different layers: no contradiction


def test_third_party_edit_routes_and_its_gates_scale(moe_model):
    la = moe_layers(moe_model)[-1]
    plan = OnlyExpert(la, 2) + ScaleGates({la: {2: 0.5}})
    cap = moe_model.capture(PROMPTS, positions="all", interventions=plan)
    lc = cap.layers[la]
    assert lc.expert_idx.shape[-1] == 1 and (lc.expert_idx == 2).all()
    probs = torch.softmax(lc.router_logits.float(), -1)[..., 2:3]
    want = torch.ones_like(probs) if moe_model.renormalizes() else probs
    assert torch.allclose(lc.expert_gate, want.to(lc.expert_gate.dtype) * 0.5, rtol=0, atol=1e-7)
    # the same request through built-ins gives the same pass
    ref = ForceExperts({la: [2]}) + SetTopK(1, layers=[la]) + ScaleGates({la: {2: 0.5}})
    assert_same_capture(cap, moe_model.capture(PROMPTS, positions="all", interventions=ref))


def test_third_party_range_errors_name_its_class():
    model = tiny_model("olmoe")
    with pytest.raises(InvalidInputError, match="OnlyExpert: expert 99 at layer 0 is out of range"):
        model.capture(PROMPTS, interventions=OnlyExpert(0, 99))
    with pytest.raises(InvalidInputError, match="OnlyExpert: layer 7 is out of range"):
        model.capture(PROMPTS, interventions=OnlyExpert(7, 0))
    dense = tiny_model("llama")
    with pytest.raises(
        InvalidInputError, match="OnlyExpert needs a router, but layer 0 of tiny:llama"
    ):
        dense.capture(PROMPTS, interventions=OnlyExpert(0, 0) + BanOddExperts())


def test_the_pass_reroutes_once_per_moe_layer_with_the_merged_request(monkeypatch):
    model = tiny_model("qwen2_moe")  # MoE, dense, MoE
    seen: list[tuple[int, RoutingRequest]] = []
    original = model.reroute

    def spy(layer: int, router: RouterOutput, request: RoutingRequest) -> RouterOutput:
        seen.append((layer, request))
        return original(layer, router, request)

    monkeypatch.setattr(model, "reroute", spy)
    plan = (
        BanExperts({0: [1]})
        + SetTopK(3)
        + ScaleGates({2: {0: 0.5}})
        + BanOddExperts()
        + ZeroExperts({2: [4]})
        + ScaleGates({2: {0: 4.0}})
    )
    model.capture(PROMPTS, interventions=plan)
    assert tuple(la for la, _ in seen) == moe_layers(model) == (0, 2)
    assert dict(seen) == {
        0: RoutingRequest(banned=[1, 3, 5], k=3),
        2: RoutingRequest(banned=[1, 3, 5], k=3, scales={0: 2.0, 4: 0.0}),
    }


# ---- the routing request --------------------------------------------------------------


def test_requests_merge_by_the_combination_rules():
    a = RoutingRequest(banned=[1, 1], scales={0: 2.0})
    b = RoutingRequest(forced=(3,), k=4, scales=[(0, 0.25), (2, 0.0)])
    merged = a.merge(b, layer=5)
    assert merged == RoutingRequest(banned={1}, forced=[3], k=4, scales={0: 0.5, 2: 0.0})
    assert merged.scales == ((0, 0.5), (2, 0.0)) and merged.banned == frozenset({1})
    assert hash(merged) == hash(b.merge(a, layer=5)) and merged == b.merge(a, layer=5)
    assert merged.merge(RoutingRequest(k=4), layer=5).k == 4
    with pytest.raises(InvalidInputError, match="at layer 5: top-k set to both 4 and 2"):
        merged.merge(RoutingRequest(k=2), layer=5)
    with pytest.raises(InvalidInputError, match="at every MoE layer: top-k set to both 4 and 2"):
        merged.merge(RoutingRequest(k=2), layer=None)
    assert RoutingRequest(scales={1: 1.0}).is_empty() and not RoutingRequest(k=2).is_empty()
    assert not RoutingRequest(scales={1: 0.5}).reroutes and RoutingRequest(banned=[0]).reroutes
    with pytest.raises(dataclasses.FrozenInstanceError):
        merged.k = 3  # type: ignore[misc]
    for bad, message in [
        (lambda: RoutingRequest(banned=[-1]), "expert must be non-negative"),
        (lambda: RoutingRequest(k=0), "top-k must be at least 1"),
        (lambda: RoutingRequest(scales={0: float("nan")}), "must be finite"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            bad()


@pytest.mark.parametrize(
    ("request_", "limits", "message"),
    [
        (RoutingRequest(banned=[2], forced=[2]), {}, "layer 3: expert 2 is both banned and forced"),
        (RoutingRequest(k=9), {"n_experts": 8, "top_k": 2}, "k=9 at layer 3 is out of range"),
        (
            RoutingRequest(forced=[0, 1, 2]),
            {"n_experts": 8, "top_k": 2},
            "3 experts forced but top-k is 2",
        ),
        (RoutingRequest(banned=range(7)), {"n_experts": 8, "top_k": 2}, "7 of 8 experts banned"),
    ],
)
def test_check_request_names_the_layer(request_, limits, message):
    with pytest.raises(InvalidInputError, match=message):
        check_request(3, request_, **limits)


def test_without_a_model_only_model_free_contradictions_are_checked():
    check_request(0, RoutingRequest(forced=[0, 1, 2]))  # top-k unknown without a model
    check_request(0, RoutingRequest(k=99))
    # the same checks with the model's limits refuse them
    with pytest.raises(InvalidInputError, match="3 experts forced but top-k is 2"):
        check_request(0, RoutingRequest(forced=[0, 1, 2]), n_experts=8, top_k=2)


# ---- the routing rule lives with the adapters, reached through the model ---------------


@pytest.mark.parametrize("family", ["olmoe", "mixtral", "qwen3_moe", "llama"])
def test_routing_rule_is_read_from_the_spec(family):
    model = tiny_model(family)
    rule = routing_rule(model.spec, model.hf.config)
    assert rule.renormalize == model.renormalizes()
    assert rule.renormalize == {"olmoe": False, "mixtral": True, "qwen3_moe": True}.get(
        family, False
    )


def test_an_empty_request_keeps_the_router_output_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 8, generator=gen)
    weights, index = torch.softmax(logits, -1).topk(2)
    router = RouterOutput(logits, weights, index)
    out = reroute(router, RoutingRequest(), RoutingRule(renormalize=False), layer=0)
    assert out.logits is logits and out.weights is weights and out.index is index
    scaled = reroute(
        router, RoutingRequest(scales={3: 0.5}), RoutingRule(renormalize=False), layer=0
    )
    assert torch.equal(scaled.index, index)
    assert torch.equal(scaled.weights, torch.where(index == 3, weights * 0.5, weights))
    with pytest.raises(InvalidInputError, match="layer 4: 8 of 8 experts banned"):
        reroute(router, RoutingRequest(banned=range(8)), RoutingRule(renormalize=True), layer=4)


# ---- typed values, one import path -----------------------------------------------------

VALUES = (
    MaskHeads,
    BanExperts,
    ForceExperts,
    SetTopK,
    ScaleGates,
    ZeroExperts,
    ScaleNeurons,
    ZeroNeurons,
    RoutingRequest,
)


@pytest.mark.parametrize("cls", VALUES, ids=lambda c: c.__name__)
def test_every_field_has_its_normalised_type(cls):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields
    for name in fields:
        assert typing.Any not in (hints[name], *typing.get_args(hints[name])), (cls, name)
    if issubclass(cls, Intervention):
        assert cls.sites and cls.sites <= set(SITES)


def test_values_have_one_home_and_the_namespace_re_exports_them():
    import mechmoe.core.interventions as home
    import mechmoe.ops.interventions as ops

    for name in home.__all__:
        assert not hasattr(ops, name), name
    for name in ("MaskHeads", "BanExperts", "Plan", "RoutingEdit", "RoutingRequest", "compose"):
        assert getattr(mechmoe, name) is getattr(home, name)
