"""Routing statistics on a tiny hand-made routing record."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from mechmoe.analysis import NotApplicableError, coactivation, router_saturation, specialization
from mechmoe.analysis.testing import toy_store
from mechmoe.core.errors import InvalidInputError

nan = math.nan

# (step, token, layer, slot): 2 steps × 3 tokens × 2 layers × top-2 of 4 experts
CHOICE = np.array(
    [
        # step 10
        [[[0, 1], [2, 3]], [[1, 2], [2, 3]], [[0, 3], [0, 1]]],
        # step 20 (final)
        [[[1, 0], [2, 3]], [[1, 3], [3, 2]], [[2, 3], [0, 1]]],
    ]
)


def record(choice=CHOICE, n_experts=4, token_id=(7, 7, 9), relation=("a", "a", "b")):
    return xr.Dataset(
        {"routing_choice": (("step", "token", "layer", "slot"), np.asarray(choice))},
        coords={
            "step": [10, 20],
            "tokens": ("step", [1e6, 2e6]),
            "layer": [0, 1],
            "expert": np.arange(n_experts),
            "token_id": ("token", list(token_id)),
            "token_relation": ("token", list(relation)),
        },
        attrs={"is_moe": 1, "top_k": 2, "n_experts": n_experts},
    )


def test_router_saturation_by_hand():
    # step 10 vs final, layer 0: {0,1}&{1,0} = 2/2, {1,2}&{1,3} = 1/2, {0,3}&{2,3} = 1/2 → 2/3
    #                   layer 1: {2,3}, {2,3}, {0,1} all equal → 1
    sat = router_saturation(record())
    assert sat.dims == ("step", "layer")
    np.testing.assert_allclose(sat.values, [[2 / 3, 1.0], [1.0, 1.0]])
    assert sat["tokens"].values.tolist() == [1e6, 2e6]
    prev = router_saturation(record(), reference="previous").values
    assert np.isnan(prev[0]).all() and prev[1].tolist() == pytest.approx([2 / 3, 1.0])
    first = router_saturation(record(), reference=10).values
    np.testing.assert_allclose(first, [[1.0, 1.0], [2 / 3, 1.0]])


def test_router_saturation_no_choice_matches_nothing():
    choice = CHOICE.copy()
    choice[0, 0, 0] = [-1, 0]  # token 0 step 10 layer 0: {0} of {0, 1} → 1/2
    sat = router_saturation(record(choice))
    assert sat.values[0, 0] == pytest.approx((0.5 + 0.5 + 0.5) / 3)


def test_router_saturation_bad_reference():
    with pytest.raises(InvalidInputError, match="not in the store"):
        router_saturation(record(), reference=15)
    with pytest.raises(InvalidInputError):
        router_saturation(record(), reference="first")


def test_coactivation_by_hand():
    # final step, layer 0: tokens {0,1}, {1,3}, {2,3}; chosen 1, 2, 1, 2 times
    #   P(1|0) = 1/1; P(0|1) = P(3|1) = 1/2; P(3|2) = 1/1; P(1|3) = P(2|3) = 1/2
    # layer 1: {2,3}, {2,3}, {0,1}: P(1|0) = P(0|1) = 1, P(3|2) = P(2|3) = 2/2
    co = coactivation(record())
    assert co.dims == ("layer", "expert", "expert_b") and co.attrs["step"] == 20
    expected0 = [
        [nan, 1.0, 0.0, 0.0],
        [0.5, nan, 0.0, 0.5],
        [0.0, 0.0, nan, 1.0],
        [0.0, 0.5, 0.5, nan],
    ]
    expected1 = [
        [nan, 1.0, 0.0, 0.0],
        [1.0, nan, 0.0, 0.0],
        [0.0, 0.0, nan, 1.0],
        [0.0, 0.0, 1.0, nan],
    ]
    np.testing.assert_allclose(co.sel(layer=0).values, expected0)
    np.testing.assert_allclose(co.sel(layer=1).values, expected1)


def test_coactivation_counts_and_earlier_step():
    counts = coactivation(record(), step=10, normalize="count").sel(layer=0).values
    # step 10 layer 0: {0,1}, {1,2}, {0,3}: diagonal = how often chosen
    assert counts.tolist() == [[2, 1, 0, 1], [1, 2, 1, 0], [0, 1, 1, 0], [1, 0, 0, 1]]
    cond = coactivation(record(), step=10).sel(layer=0).values
    assert cond[0].tolist()[1:] == [0.5, 0.0, 0.5]


def test_coactivation_unused_expert_row_is_nan():
    co = coactivation(record(n_experts=5)).sel(layer=0).values
    assert np.isnan(co[4]).all() and co[:4, 4].tolist() == [0.0] * 4


def test_specialization_by_hand():
    # final step, layer 0: tokens (id, relation) = 0: (7, a), 1: (7, a), 2: (9, b)
    #   e0 ← token 0: id 7 only → top share 1, entropy 0; relation a only
    #   e1 ← tokens 0, 1: ids 7, 7 → 1, entropy 0
    #   e2 ← token 2: id 9 → 1
    #   e3 ← tokens 1, 2: ids 7, 9 → 1/2 (tie → smaller id 7), entropy ln2/ln2 = 1;
    #       relations a, b → 1/2 (tie → "a"), entropy 1
    # relation_routing P(e | r): a (2 tokens): e0 1/2, e1 2/2, e2 0, e3 1/2; b: e2 1, e3 1
    sp = specialization(record()).sel(step=20, layer=0)
    assert sp["n_routed"].values.tolist() == [1, 2, 1, 2]
    assert sp["token_top_share"].values.tolist() == pytest.approx([1, 1, 1, 0.5])
    assert sp["token_top_id"].values.tolist() == [7, 7, 9, 7]
    assert sp["token_entropy"].values.tolist() == pytest.approx([0, 0, 0, 1])
    assert sp["relation_top_share"].values.tolist() == pytest.approx([1, 1, 1, 0.5])
    assert sp["relation_top"].values.tolist() == ["a", "a", "b", "a"]
    assert sp["relation_entropy"].values.tolist() == pytest.approx([0, 0, 0, 1])
    routing = sp["relation_routing"].transpose("relation", "expert")
    assert routing.sel(relation="a").values.tolist() == pytest.approx([0.5, 1, 0, 0.5])
    assert routing.sel(relation="b").values.tolist() == pytest.approx([0, 0, 1, 1])


def test_specialization_unused_expert():
    sp = specialization(record(n_experts=5)).sel(step=20, layer=0, expert=4)
    assert int(sp["n_routed"]) == 0 and int(sp["token_top_id"]) == -1
    assert math.isnan(float(sp["token_top_share"])) and math.isnan(float(sp["token_entropy"]))
    assert str(sp["relation_top"].values) == ""


def test_specialization_sums_to_k_over_experts():
    sp = specialization(toy_store(moe=True))
    total = sp["relation_routing"].sum("expert")
    np.testing.assert_allclose(total.values, 2.0)  # each token picks k = 2 distinct experts


def test_dense_store_has_no_routing_statistics():
    dense = toy_store(moe=False)
    for fn in (router_saturation, coactivation, specialization):
        with pytest.raises(NotApplicableError, match="dense model has no router"):
            fn(dense)


def test_expert_id_out_of_range():
    with pytest.raises(InvalidInputError, match="names expert 3"):
        coactivation(record(n_experts=3))


def test_unmeasured_routing_step_is_left_out():
    # a step added without the routing measure: NaN-padded float record, left out
    padded = np.concatenate([CHOICE[:1].astype(float), np.full((1, 3, 2, 2), np.nan), CHOICE[1:]])
    ds = xr.Dataset(
        {"routing_choice": (("step", "token", "layer", "slot"), padded)},
        coords={"step": [10, 15, 20], "layer": [0, 1], "expert": np.arange(4)},
    )
    sat = router_saturation(ds)
    assert sat["step"].values.tolist() == [10, 20]
    np.testing.assert_allclose(sat.values, [[2 / 3, 1.0], [1.0, 1.0]])
    assert coactivation(ds).attrs["step"] == 20
