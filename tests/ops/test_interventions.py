"""Each intervention against the same change made by hand on a copy of the HF model.

The reference is always a plain HF forward (no tracing) of a deep copy whose weights
were edited (or, where no weight edit expresses the change, whose router was replaced
by routing written out here by hand). Logits must agree to 1e-6.

The surgery comparisons run the tiny models in float64: an edit applied as a delta
(``out + g·m·(f−1)·W[:, k]``) and the same edit baked into the weights round
differently in float32 (~1e-6 on these deliberately large random weights), and that
rounding is not what the tests are about. Bit-exact properties (empty plans, routing
re-derived at the model's own k) are checked in float32, the dtype users run.
"""

from __future__ import annotations

import copy
import dataclasses
import types

import pytest
import torch
import torch.nn.functional as F

from mechmoe.core.errors import InvalidInputError
from mechmoe.core.interventions import (
    BanExperts,
    ForceExperts,
    MaskHeads,
    Plan,
    ScaleGates,
    ScaleNeurons,
    SetTopK,
    ZeroExperts,
    ZeroNeurons,
    compose,
)
from mechmoe.ops.interventions import head_means
from mechmoe.testing import DEFAULT_PROMPTS, tiny_model

PROMPTS = list(DEFAULT_PROMPTS)  # different lengths, so the batch has left padding
TOL = 1e-6
MOE = ("olmoe", "mixtral")
ALL = ("olmoe", "mixtral", "llama")


def tiny64(family: str):
    model = tiny_model(family)
    model.hf.double()
    return model


@pytest.fixture(scope="module", params=ALL)
def model(request):
    return tiny64(request.param)


@pytest.fixture(scope="module", params=MOE)
def moe_model(request):
    return tiny64(request.param)


@pytest.fixture(scope="module", params=ALL)
def model32(request):
    return tiny_model(request.param)


def hf_last_logits(model, hf) -> torch.Tensor:
    """Last-token logits of a plain HF forward of ``hf`` on the test batch."""
    batch = model.tokenize(PROMPTS)
    with torch.no_grad():
        out = hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).logits
    b = torch.arange(batch.size)[:, None]
    return out[b, batch.positions]


def edited_logits(model, interventions) -> torch.Tensor:
    return model.capture(PROMPTS, interventions=interventions).logits


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.isfinite(a).all()
    diff = (a - b).abs().max().item()
    assert diff <= TOL, diff


def assert_changed(model, interventions) -> None:
    base = model.capture(PROMPTS).logits
    assert (edited_logits(model, interventions) - base).abs().max().item() > 1e-3


def layers_of(hf):
    return hf.model.layers


# ---- routing done by hand on the copy -----------------------------------------------


def hand_router(router, *, k: int, renorm: bool, bias=None, forced=()):
    """Replace ``router.forward``: logits (+ bias) → fp32 softmax → top-k → renormalise.

    Forced experts are put in the top-k first, one token at a time, the rest are the
    most probable of the others.
    """

    def forward(self, hidden_states):
        x = hidden_states.reshape(-1, self.weight.shape[1])
        logits = F.linear(x, self.weight)
        z = logits if bias is None else logits + bias
        probs = torch.softmax(z.float(), dim=-1)
        rows = []
        for p in probs:
            order = [
                e
                for e in torch.argsort(p, descending=True, stable=True).tolist()
                if e not in forced
            ]
            rows.append(list(forced) + order[: k - len(forced)])
        index = torch.tensor(rows, dtype=torch.long)
        weights = probs.gather(-1, index)
        if renorm:
            weights = weights / weights.sum(-1, keepdim=True)
        return logits, weights.to(logits.dtype), index

    router.forward = types.MethodType(forward, router)


def test_hand_router_reproduces_the_model(moe_model):
    """The hand-written reference routing is the model's own rule (so it can judge edits)."""
    hf = copy.deepcopy(moe_model.hf)
    for layer in layers_of(hf):
        hand_router(layer.mlp.gate, k=moe_model.dims.top_k[0], renorm=moe_model.renormalizes())
    assert_close(hf_last_logits(moe_model, hf), hf_last_logits(moe_model, moe_model.hf))


# ---- heads ------------------------------------------------------------------------------


def test_mask_heads_zero_equals_zeroed_W_O(model):
    heads = {0: [1, 3], 1: [0]}
    hf = copy.deepcopy(model.hf)
    D = model.dims.head_dim
    with torch.no_grad():
        for layer, hs in heads.items():
            w = layers_of(hf)[layer].self_attn.o_proj.weight
            for h in hs:
                w[:, h * D : (h + 1) * D] = 0
    assert_close(edited_logits(model, MaskHeads(heads)), hf_last_logits(model, hf))
    assert_changed(model, MaskHeads(heads))


def test_mask_heads_given_mean_equals_W_O_surgery(model):
    H, D = model.dims.n_heads, model.dims.head_dim
    means = {1: torch.randn(H, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)}
    hf = copy.deepcopy(model.hf)
    with torch.no_grad():
        o = layers_of(hf)[1].self_attn.o_proj
        bias = (
            torch.zeros(o.weight.shape[0], dtype=o.weight.dtype)
            if o.bias is None
            else o.bias.clone()
        )
        for h in (0, 2):
            cols = slice(h * D, (h + 1) * D)
            bias += o.weight[:, cols] @ means[1][h]
            o.weight[:, cols] = 0
        o.bias = torch.nn.Parameter(bias)
    edit = MaskHeads({1: [0, 2]}, mode="mean", means=means)
    assert_close(edited_logits(model, edit), hf_last_logits(model, hf))


def test_mask_heads_batch_mean_is_over_real_tokens(model):
    """mode='mean' without means uses the batch's non-pad tokens: same as passing that mean."""
    cap = model.capture(PROMPTS, positions="all")
    z = cap.layers[1].head_z[cap.batch.valid]  # (real tokens, H, D)
    means = {1: z.mean(0)}
    a = edited_logits(model, MaskHeads({1: [1]}, mode="mean"))
    b = edited_logits(model, MaskHeads({1: [1]}, mode="mean", means=means))
    assert_close(a, b)
    via_helper = head_means(model, PROMPTS)
    assert torch.allclose(via_helper[1], means[1], atol=1e-6)


def test_mask_heads_mean_ignores_nan_on_pad_rows(model):
    """A NaN sitting on a pad row of the head input must not reach the mean."""
    from mechmoe.core.edits import EditContext

    batch = model.tokenize(PROMPTS)
    B, T = batch.input_ids.shape
    value = torch.ones(B, T, model.dims.n_heads, model.dims.head_dim)
    value[batch.attention_mask == 0] = float("nan")
    out = MaskHeads({0: [0]}, mode="mean").apply("heads", 0, value, EditContext(model, batch))
    assert torch.isfinite(out[:, :, 0]).all()
    assert torch.equal(out[:, :, 0], torch.ones_like(out[:, :, 0]))


# ---- routing ------------------------------------------------------------------------------


def test_ban_experts_equals_router_bias_of_minus_inf(moe_model):
    ban = {0: [1], 1: [0, 2]}
    hf = copy.deepcopy(moe_model.hf)
    for layer, mod in enumerate(layers_of(hf)):
        bias = torch.zeros(moe_model.dims.n_experts[layer])
        bias[ban[layer]] = float("-inf")
        hand_router(
            mod.mlp.gate, k=moe_model.dims.top_k[layer], renorm=moe_model.renormalizes(), bias=bias
        )
    cap = moe_model.capture(PROMPTS, interventions=BanExperts(ban))
    assert_close(cap.logits, hf_last_logits(moe_model, hf))
    for layer, experts in ban.items():
        for e in experts:
            assert not (cap.layers[layer].expert_idx == e).any()
    assert_changed(moe_model, BanExperts(ban))


def test_force_experts_equals_routing_by_hand(moe_model):
    forced = {0: (3,), 1: (0,)}
    hf = copy.deepcopy(moe_model.hf)
    for layer, mod in enumerate(layers_of(hf)):
        hand_router(
            mod.mlp.gate,
            k=moe_model.dims.top_k[layer],
            renorm=moe_model.renormalizes(),
            forced=forced[layer],
        )
    cap = moe_model.capture(PROMPTS, interventions=ForceExperts(forced))
    assert_close(cap.logits, hf_last_logits(moe_model, hf))
    assert (cap.layers[0].expert_idx == 3).any(-1).all()
    # gates are the forced expert's softmax probability (renormalised where the model does)
    lc = cap.layers[0]
    probs = torch.softmax(lc.router_logits.float(), -1).gather(-1, lc.expert_idx)
    if moe_model.renormalizes():
        probs = probs / probs.sum(-1, keepdim=True)
    assert torch.allclose(lc.expert_gate.float(), probs, atol=1e-7)


def test_force_more_than_top_k_with_set_top_k(moe_model):
    forced = {0: (0, 1, 2)}
    hf = copy.deepcopy(moe_model.hf)
    for layer, mod in enumerate(layers_of(hf)):
        hand_router(
            mod.mlp.gate, k=3, renorm=moe_model.renormalizes(), forced=forced.get(layer, ())
        )
    plan = ForceExperts(forced) + SetTopK(3)
    assert_close(edited_logits(moe_model, plan), hf_last_logits(moe_model, hf))


def test_set_top_k_equals_config_change(moe_model):
    hf = copy.deepcopy(moe_model.hf)
    for mod in layers_of(hf):
        mod.mlp.gate.top_k = 3
    assert_close(edited_logits(moe_model, SetTopK(3)), hf_last_logits(moe_model, hf))
    assert_changed(moe_model, SetTopK(3))


def test_set_top_k_all_experts_is_the_full_soft_mixture(moe_model):
    """SetTopK(E): every expert weighted by its softmax probability, computed by hand."""
    hf = copy.deepcopy(moe_model.hf)

    def soft_mixture(self, hidden_states):
        B, T, d = hidden_states.shape
        x = hidden_states.reshape(-1, d)
        probs = torch.softmax(F.linear(x, self.gate.weight).float(), dim=-1)
        out = torch.zeros_like(x)
        ex = self.experts
        for e in range(probs.shape[-1]):
            gate, up = F.linear(x, ex.gate_up_proj[e]).chunk(2, dim=-1)
            out += probs[:, e, None].to(x.dtype) * F.linear(ex.act_fn(gate) * up, ex.down_proj[e])
        return out.reshape(B, T, d)

    for mod in layers_of(hf):
        mod.mlp.forward = types.MethodType(soft_mixture, mod.mlp)
    E = moe_model.dims.n_experts[0]
    assert_close(edited_logits(moe_model, SetTopK(E)), hf_last_logits(moe_model, hf))


@pytest.mark.parametrize("factor", [0.0, 0.5, 2.0])
def test_scale_gates_equals_scaled_down_proj(moe_model, factor):
    gates = {0: {1: factor, 2: factor}, 1: {0: factor}}
    hf = copy.deepcopy(moe_model.hf)
    with torch.no_grad():
        for layer, row in gates.items():
            for e, f in row.items():
                layers_of(hf)[layer].mlp.experts.down_proj[e] *= f
    edit = ScaleGates(gates) if factor else ZeroExperts({la: list(r) for la, r in gates.items()})
    assert_close(edited_logits(moe_model, edit), hf_last_logits(moe_model, hf))


def test_zero_experts_keeps_routing(moe_model):
    base = moe_model.capture(PROMPTS)
    cap = moe_model.capture(PROMPTS, interventions=ZeroExperts({0: [0, 1, 2]}))
    assert torch.equal(cap.layers[0].expert_idx, base.layers[0].expert_idx)


# ---- neurons ------------------------------------------------------------------------------


def test_neurons_equal_scaled_down_proj_columns(model):
    moe = model.dims.is_moe
    # on dense layers the MLP is expert 0
    triples = [(0, 1 if moe else 0, 5), (0, 0, 7), (1, 0, 3), (1, 0, 11)]
    hf = copy.deepcopy(model.hf)
    with torch.no_grad():
        for layer, e, n in triples:
            mlp = layers_of(hf)[layer].mlp
            if moe:
                mlp.experts.down_proj[e][:, n] = 0
            else:
                mlp.down_proj.weight[:, n] = 0
    assert_close(edited_logits(model, ZeroNeurons(triples)), hf_last_logits(model, hf))
    scaled = {t: 3.0 for t in triples[:2]}
    hf2 = copy.deepcopy(model.hf)
    with torch.no_grad():
        for layer, e, n in scaled:
            mlp = layers_of(hf2)[layer].mlp
            if moe:
                mlp.experts.down_proj[e][:, n] *= 3.0
            else:
                mlp.down_proj.weight[:, n] *= 3.0
    assert_close(edited_logits(model, ScaleNeurons(scaled)), hf_last_logits(model, hf2))


# ---- the whole plan at once ---------------------------------------------------------------


def test_composed_plan_equals_combined_surgery(moe_model):
    D = moe_model.dims.head_dim
    hf = copy.deepcopy(moe_model.hf)
    with torch.no_grad():
        layers_of(hf)[0].self_attn.o_proj.weight[:, 2 * D : 3 * D] = 0
        layers_of(hf)[1].mlp.experts.down_proj[1][:, 4] = 0
        layers_of(hf)[1].mlp.experts.down_proj[2] *= 0.5
    for layer, mod in enumerate(layers_of(hf)):
        bias = torch.zeros(moe_model.dims.n_experts[layer])
        if layer == 1:
            bias[3] = float("-inf")
        hand_router(
            mod.mlp.gate, k=moe_model.dims.top_k[layer], renorm=moe_model.renormalizes(), bias=bias
        )
    plan = (
        MaskHeads({0: [2]})
        + BanExperts({1: [3]})
        + ScaleGates({1: {2: 0.5}})
        + ZeroNeurons([(1, 1, 4)])
    )
    assert_close(edited_logits(moe_model, plan), hf_last_logits(moe_model, hf))
    # the order of the values does not matter
    reordered = compose(list(reversed(plan.items)))
    assert torch.equal(edited_logits(moe_model, plan), edited_logits(moe_model, reordered))


# ---- no-ops, composition, errors ----------------------------------------------------------


@pytest.mark.parametrize(
    "empty",
    [Plan(), MaskHeads({}), ScaleGates({}, factor=0.5), ZeroNeurons([]), compose(None, [])],
    ids=["plan", "heads", "gates", "neurons", "compose"],
)
def test_empty_intervention_changes_nothing_bit_for_bit(model32, empty):
    model = model32  # an empty routing value is valid on a dense model too: nothing to route
    base = model.capture(PROMPTS)
    cap = model.capture(PROMPTS, interventions=empty)
    assert empty.is_empty()
    assert torch.equal(cap.logits, base.logits)
    for a, b in zip(cap.layers, base.layers, strict=True):
        assert torch.equal(a.ffn_out, b.ffn_out) and torch.equal(a.expert_idx, b.expert_idx)


@pytest.mark.parametrize("family", MOE)
def test_routing_rederived_at_model_k_is_bit_exact(family):
    """SetTopK(model's k) re-derives routing with the model's arithmetic: nothing changes."""
    moe_model = tiny_model(family)
    base = moe_model.capture(PROMPTS)
    cap = moe_model.capture(PROMPTS, interventions=SetTopK(moe_model.dims.top_k[0]))
    assert torch.equal(cap.logits, base.logits)


def test_composition_forms_agree():
    a, b, c = MaskHeads({0: [1]}), BanExperts({1: [2]}), SetTopK(3)
    plan = a + b + c
    assert isinstance(plan, Plan) and plan.items == (a, b, c)
    assert compose([a, b], c) == plan == compose(a + b, [c]) == sum([a, b, c])
    assert a + b == MaskHeads([(0, 1)]) + BanExperts([(1, 2)])
    assert hash(plan) == hash(compose(a, b, c))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.mode = "mean"  # type: ignore[misc]
    assert len(plan.edits) == 3  # the check, the head mask, the merged routing


def test_interventions_are_values():
    assert MaskHeads({0: [3, 1, 1]}) == MaskHeads([(0, 1), (0, 3)])
    assert repr(MaskHeads({3: [5], 7: [1]})) == "MaskHeads({3: [5], 7: [1]}, mode='zero')"
    assert ZeroNeurons([(0, 0, 1)]).neurons == ((((0, 0, 1)), 0.0),)
    # a value keeps its items in order; the factors combine when the plan runs
    twice = ScaleNeurons({(0, 0, 1): 2.0}) + ScaleNeurons({(0, 0, 1): 2.0})
    assert twice.items == (ScaleNeurons({(0, 0, 1): 2.0}),) * 2


def test_listing_twice_applies_twice():
    """Within one value an index listed twice is scaled twice (the factors multiply)."""
    assert ScaleNeurons([(0, 0, 1), (0, 0, 1)], factor=2.0).neurons == (((0, 0, 1), 4.0),)
    assert ScaleGates({0: [1, 1]}, factor=2.0).gates == ((0, ((1, 4.0),)),)
    assert ScaleGates([(0, 1), (0, 1), (0, 2)], factor=0.5).gates == ((0, ((1, 0.25), (2, 0.5))),)
    assert ZeroExperts([(1, 2), (1, 2)]).gates == ((1, ((2, 0.0),)),)
    # masks and expert sets are idempotent: listed twice is listed once
    assert MaskHeads({0: [1, 1]}).pairs == ((0, 1),)
    assert BanExperts({0: [1, 1]}).experts == ((0, (1,)),)


def test_neuron_values_merge_into_one_product_edit():
    """The plan runs one neuron edit whose factors are the products of its values'."""
    plan = ScaleNeurons({(0, 0, 1): 2.0, (1, 0, 3): 0.5}) + ScaleNeurons({(0, 0, 1): 2.0})
    [merged] = [e for e in plan.edits if isinstance(e, ScaleNeurons)]
    assert dict(merged.neurons) == {(0, 0, 1): 4.0, (1, 0, 3): 0.5}
    plan = ScaleNeurons({(0, 0, 1): 3.0}) + ZeroNeurons([(0, 0, 1)])
    [merged] = [e for e in plan.edits if isinstance(e, ScaleNeurons)]
    assert dict(merged.neurons) == {(0, 0, 1): 0.0}


def test_scale_neurons_twice_equals_surgery_by_the_product(model):
    """``ScaleNeurons({n: 2}) + ScaleNeurons({n: 2})`` scales by 4, the same as one ×4 value
    and as a ×4 ``down_proj`` column (not by 3, as adding two deltas would)."""
    e = 1 if model.dims.is_moe else 0
    n = (1, e, 3)
    hf = copy.deepcopy(model.hf)
    with torch.no_grad():
        mlp = layers_of(hf)[1].mlp
        (mlp.experts.down_proj[e] if model.dims.is_moe else mlp.down_proj.weight)[:, 3] *= 4.0
    ref = hf_last_logits(model, hf)
    assert_close(edited_logits(model, ScaleNeurons({n: 2.0}) + ScaleNeurons({n: 2.0})), ref)
    assert_close(edited_logits(model, ScaleNeurons([n, n], factor=2.0)), ref)
    assert_close(edited_logits(model, [ScaleNeurons({n: 2.0}), ScaleNeurons({n: 2.0})]), ref)
    assert_changed(model, ScaleNeurons({n: 4.0}) + ScaleNeurons({n: 0.5}))  # net ×2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: BanExperts({0: [1]}) + ForceExperts({0: [1, 2]}),
            "expert 1 is both banned and forced",
        ),
        (lambda: SetTopK(2) + SetTopK(3), "top-k set to both 2 and 3"),
        (lambda: MaskHeads({0: [1]}) + MaskHeads({0: [1]}, mode="mean"), "head 1 at layer 0"),
        (lambda: MaskHeads({0: [-1]}), "non-negative"),
        (lambda: SetTopK(0), "at least 1"),
        (lambda: ScaleGates({0: [1]}), "factor="),
        (lambda: ZeroNeurons([(0, 1)]), "(layer, expert, neuron)"),
        (lambda: compose("heads"), "cannot compose"),
    ],
)
def test_contradictions_fail_at_composition(make, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_unknown_mask_mode_is_refused():
    with pytest.raises(InvalidInputError, match="MaskHeads: mode='max': use one of 'zero', 'mean'"):
        MaskHeads({0: [1]}, mode="max")


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (ForceExperts({0: [0, 1, 2]}), "3 experts forced but top-k is 2"),
        (ForceExperts({0: [0, 1, 2]}) + SetTopK(2, layers=[0]), "3 experts forced but top-k is 2"),
        (
            lambda m: BanExperts({1: range(m.dims.n_experts[1] - 1)}),
            "banned leaves fewer than top-k=2",
        ),
        (SetTopK(99), "k=99 at layer 0 is out of range"),
        (BanExperts({5: [0]}), "layer 5 is out of range"),
        (BanExperts({1: [42]}), "expert 42 at layer 1 is out of range"),
        (MaskHeads({1: [9]}), "head 9 at layer 1 is out of range"),
        (ZeroNeurons([(1, 0, 999)]), "neuron 999 of expert 0 at layer 1 is out of range"),
        (
            MaskHeads({0: [1]}, mode="mean", means={0: torch.zeros(2, 2)}),
            "means of layer 0 have shape",
        ),
    ],
)
def test_invalid_plans_fail_before_the_forward_pass(moe_model, plan, message):
    calls = []
    hook = moe_model.hf.get_input_embeddings().register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InvalidInputError, match=message):
            moe_model.capture(
                PROMPTS, interventions=compose(plan(moe_model) if callable(plan) else plan)
            )
    finally:
        hook.remove()
    assert not calls


def test_routing_on_a_dense_layer_names_the_layer():
    dense = tiny_model("llama")
    for edit in (
        BanExperts({1: [0]}),
        ForceExperts({0: [0]}),
        ScaleGates({1: {0: 0.5}}),
        SetTopK(1, layers=[1]),
    ):
        with pytest.raises(InvalidInputError, match=r"layer \d of tiny:llama is dense"):
            dense.capture(PROMPTS, interventions=edit)
    with pytest.raises(InvalidInputError, match="has no MoE layer"):
        dense.capture(PROMPTS, interventions=SetTopK(1))
    with pytest.raises(InvalidInputError, match="expert 1 at layer 0 is out of range"):
        dense.capture(PROMPTS, interventions=ZeroNeurons([(0, 1, 0)]))


def test_mixed_stack_names_the_dense_layer():
    """Qwen2-MoE with a dense layer in the middle: routing there is refused by name."""
    model = tiny_model("qwen2_moe")
    dense = [la for la in range(model.dims.n_layers) if model.layer_kind(la) == "dense"]
    with pytest.raises(InvalidInputError, match=f"layer {dense[0]} of"):
        model.capture(PROMPTS, interventions=BanExperts({dense[0]: [0]}))
    # SetTopK without layers applies to the MoE layers only
    cap = model.capture(PROMPTS, interventions=SetTopK(3))
    moe = [la for la in range(model.dims.n_layers) if model.layer_kind(la) == "moe"]
    assert cap.layers[moe[0]].expert_idx.shape[-1] == 3


def test_edits_keep_pad_rows_finite(moe_model):
    plan = (
        MaskHeads({0: [0, 1]}, mode="mean")
        + BanExperts({0: [0]})
        + ForceExperts({1: [1]})
        + SetTopK(3)
        + ScaleNeurons({(1, 1, 2): 4.0})
    )
    cap = moe_model.capture(PROMPTS, positions="all", interventions=plan)
    assert torch.isfinite(cap.logits).all()
    for lc in cap.layers:
        assert torch.isfinite(lc.ffn_out).all() and torch.isfinite(lc.expert_gate).all()


def test_probes_evaluate_runs_under_interventions():
    from mechmoe.probes import evaluate, load_probe, summarize

    model = tiny_model("olmoe")
    probe = load_probe("adj_antonym").head(6)
    base = evaluate(model, probe, k=5, progress=False)
    edited = evaluate(
        model, probe, k=5, progress=False, interventions=MaskHeads({0: [0, 1, 2, 3]}) + SetTopK(4)
    )
    assert not (base["logprob"].values == edited["logprob"].values).all()
    same = evaluate(model, probe, k=5, progress=False, interventions=Plan())
    assert (same["logprob"].values == base["logprob"].values).all()
    assert int(summarize(edited)["count"].sel(relation="all")) == 6


def test_a_plain_list_means_the_same_as_compose():
    model = tiny_model("olmoe")
    prompts = ["The capital of France is", "Tokyo is a city in"]
    items = [ForceExperts({0: [0, 1, 2]}), SetTopK(3)]
    as_list = model.capture(prompts, interventions=items)
    composed = model.capture(prompts, interventions=compose(*items))
    assert torch.equal(as_list.logits, composed.logits)
    assert set(as_list.layers[0].expert_idx.flatten().tolist()) >= {0, 1, 2}


# ---- every pair of kinds, against combined weight surgery ------------------------------------
#
# Each kind has two instances that overlap with each other (same-kind pairs use both) and
# with the other kinds' first instances (they touch layer 1, expert 1, neuron 3, head 0:1).
# The reference below writes the combination rules of docs/interventions.md out by hand:
# scalings multiply, ban/force sets unite, masks on one head must agree; the result is then
# baked into a deep copy (W_O columns and bias, down_proj rows and columns, a hand router).

KINDS = (
    "mask_zero",
    "mask_mean",
    "ban",
    "force",
    "top_k",
    "scale_gates",
    "zero_experts",
    "scale_neurons",
    "zero_neurons",
)

SPECS = {
    "mask_zero": (("mask", {(0, 1), (1, 2)}, False), ("mask", {(1, 2), (1, 3)}, False)),
    "mask_mean": (("mask", {(0, 1)}, True), ("mask", {(0, 1), (1, 0)}, True)),
    "ban": (("ban", {(1, 2)}), ("ban", {(1, 2), (0, 0)})),
    "force": (("force", {(1, 1)}), ("force", {(1, 1), (0, 3)})),
    "top_k": (("top_k", 3), ("top_k", 3)),
    "scale_gates": (
        ("gates", {(1, 1): 0.5, (1, 2): 2.0}),
        ("gates", {(1, 1): 0.5, (0, 0): 3.0}),
    ),
    "zero_experts": (("gates", {(1, 1): 0.0}), ("gates", {(1, 1): 0.0, (1, 0): 0.0})),
    "scale_neurons": (
        ("neurons", {(1, 1, 3): 2.0, (0, 0, 7): 0.5}),
        ("neurons", {(1, 1, 3): 2.0, (1, 0, 5): 3.0}),
    ),
    "zero_neurons": (
        ("neurons", {(1, 1, 3): 0.0}),
        ("neurons", {(1, 1, 3): 0.0, (0, 2, 4): 0.0}),
    ),
}

PAIRS = [(a, b) for i, a in enumerate(KINDS) for b in KINDS[i:]]


def fixed_means(model):
    H, D = model.dims.n_heads, model.dims.head_dim
    gen = torch.Generator().manual_seed(11)
    return {la: torch.randn(H, D, generator=gen, dtype=torch.float64) for la in (0, 1)}


def as_value(kind: str, spec, means):
    tag = spec[0]
    if tag == "mask":
        pairs = sorted(spec[1])
        return MaskHeads(pairs, mode="mean", means=means) if spec[2] else MaskHeads(pairs)
    if tag == "ban":
        return BanExperts(sorted(spec[1]))
    if tag == "force":
        return ForceExperts(sorted(spec[1]))
    if tag == "top_k":
        return SetTopK(spec[1])
    if tag == "gates":
        if kind == "zero_experts":
            return ZeroExperts(sorted(spec[1]))
        rows: dict = {}
        for (la, e), f in spec[1].items():
            rows.setdefault(la, {})[e] = f
        return ScaleGates(rows)
    if kind == "zero_neurons":
        return ZeroNeurons(sorted(spec[1]))
    return ScaleNeurons(dict(spec[1]))


def reference_state(specs, means):
    """The combination rules, written out: returns the state or the refusal's reason."""
    st = {"heads": {}, "ban": set(), "force": set(), "k": None, "experts": {}, "neurons": {}}
    for spec in specs:
        tag = spec[0]
        if tag == "mask":
            for la, h in spec[1]:
                new = ("mean", means[la][h]) if spec[2] else ("zero", None)
                old = st["heads"].setdefault((la, h), new)
                if old[0] != new[0] or (new[0] == "mean" and not torch.equal(old[1], new[1])):
                    return "contradictory masks"
        elif tag == "ban":
            st["ban"] |= spec[1]
        elif tag == "force":
            st["force"] |= spec[1]
        elif tag == "top_k":
            if st["k"] not in (None, spec[1]):
                return "top-k set to both"
            st["k"] = spec[1]
        elif tag == "gates":
            for key, f in spec[1].items():
                st["experts"][key] = st["experts"].get(key, 1.0) * f
        else:
            for key, f in spec[1].items():
                st["neurons"][key] = st["neurons"].get(key, 1.0) * f
    if st["ban"] & st["force"]:
        return "both banned and forced"
    return st


def surgery_logits(model, st):
    hf = copy.deepcopy(model.hf)
    D = model.dims.head_dim
    with torch.no_grad():
        for (la, h), (mode, mean) in st["heads"].items():
            o = layers_of(hf)[la].self_attn.o_proj
            cols = slice(h * D, (h + 1) * D)
            if mode == "mean":
                bias = (
                    torch.zeros(o.weight.shape[0], dtype=o.weight.dtype)
                    if o.bias is None
                    else o.bias.detach().clone()
                )
                o.bias = torch.nn.Parameter(bias + o.weight[:, cols] @ mean)
            o.weight[:, cols] = 0
        for (la, e), f in st["experts"].items():
            layers_of(hf)[la].mlp.experts.down_proj[e] *= f
        for (la, e, n), f in st["neurons"].items():
            layers_of(hf)[la].mlp.experts.down_proj[e][:, n] *= f
    for la, mod in enumerate(layers_of(hf)):
        bias = torch.zeros(model.dims.n_experts[la])
        bias[[e for (lb, e) in st["ban"] if lb == la]] = float("-inf")
        hand_router(
            mod.mlp.gate,
            k=st["k"] or model.dims.top_k[la],
            renorm=model.renormalizes(),
            bias=bias,
            forced=tuple(sorted(e for (lb, e) in st["force"] if lb == la)),
        )
    return hf_last_logits(model, hf)


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_every_pair_composes_as_one_after_the_other(moe_model, first, second):
    """A + B (and B + A) equals the surgery of the written combination rule."""
    means = fixed_means(moe_model)
    spec_a = SPECS[first][0]
    spec_b = SPECS[second][1] if first == second else SPECS[second][0]
    a, b = as_value(first, spec_a, means), as_value(second, spec_b, means)
    st = reference_state([spec_a, spec_b], means)
    if isinstance(st, str):
        for make in (lambda: a + b, lambda: b + a):
            with pytest.raises(InvalidInputError, match=st):
                moe_model.capture(PROMPTS, interventions=make())
        return
    expected = surgery_logits(moe_model, st)
    assert_close(edited_logits(moe_model, a + b), expected)
    assert_close(edited_logits(moe_model, b + a), expected)


def test_contradictory_pairs_are_refused():
    means = {0: torch.zeros(4, 16, dtype=torch.float64)}
    other = {0: torch.ones(4, 16, dtype=torch.float64)}
    with pytest.raises(InvalidInputError, match="head 1 at layer 0 is mean-masked with two"):
        MaskHeads({0: [1]}, mode="mean", means=means) + MaskHeads(
            {0: [1]}, mode="mean", means=other
        )
    with pytest.raises(InvalidInputError, match="head 1 at layer 0 is mean-masked with two"):
        MaskHeads({0: [1]}, mode="mean") + MaskHeads({0: [1]}, mode="mean", means=other)
    # the same mask twice is the mask once
    twice = MaskHeads({0: [1]}, mode="mean", means=means) + MaskHeads(
        {0: [1, 2]}, mode="mean", means=means
    )
    assert len(twice) == 2
