"""Positive updates and their distribution against values computed by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import xarray as xr

from mechmoe.analysis import (
    backbone_curve,
    backbone_share,
    gini,
    lorenz,
    normalized_entropy,
    positive_updates,
)
from mechmoe.analysis.distribution import top_count
from mechmoe.core.errors import InvalidInputError

# 3 steps × 4 neurons; NaN = the neuron's expert was not chosen (counts as 0).
# Δ(step 10) = [1, −1, 0, 0]   → positive part [1, 0, 0, 0]
# Δ(step 20) = [2, 2, −1, 5]   → positive part [2, 2, 0, 5]
# PU = [3, 2, 0, 5], ΣPU = 10
S = np.array(
    [
        [0.0, 1.0, 2.0, 0.0],
        [1.0, 0.0, 2.0, np.nan],
        [3.0, 2.0, 1.0, 5.0],
    ]
)
PU = [3.0, 2.0, 0.0, 5.0]


def scores(values=S, steps=(0, 10, 20)):
    return xr.DataArray(
        values, dims=("step", "neuron"), coords={"step": list(steps), "neuron": [0, 1, 2, 3]}
    )


def test_positive_updates_by_hand():
    pu = positive_updates(scores())
    assert pu.dims == ("neuron",)
    assert pu.values.tolist() == PU
    assert pu["neuron"].values.tolist() == [0, 1, 2, 3]


def test_positive_updates_sorts_steps():
    shuffled = scores(S[[2, 0, 1]], steps=(20, 0, 10))
    assert positive_updates(shuffled).values.tolist() == PU


def test_positive_updates_single_checkpoint_is_zero():
    pu = positive_updates(scores(S[:1], steps=(0,)))
    assert pu.values.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_positive_updates_keeps_unit_dims_and_drops_step_coords():
    # (step, layer, expert, neuron) = (2, 1, 2, 2): PU = max(S1 − S0, 0)
    s0 = np.array([[[1.0, 2.0], [0.0, 0.0]]])
    s1 = np.array([[[3.0, 1.0], [np.nan, 4.0]]])
    da = xr.DataArray(
        np.stack([s0, s1]),
        dims=("step", "layer", "expert", "neuron"),
        coords={"step": [5, 9], "tokens": ("step", [1.0, 2.0])},
    )
    pu = positive_updates(da)
    assert pu.dims == ("layer", "expert", "neuron")
    assert pu.values.tolist() == [[[2.0, 0.0], [0.0, 4.0]]]
    assert "tokens" not in pu.coords and "step" not in pu.coords


def test_positive_updates_lazy_input_matches():
    lazy = scores().chunk({"step": 1})
    assert positive_updates(lazy).values.tolist() == PU


@pytest.mark.parametrize(
    "bad",
    [
        xr.DataArray(np.zeros(4), dims=("neuron",)),
        xr.DataArray(np.zeros((2, 4)), dims=("step", "neuron"), coords={"step": [1, 1]}),
        xr.DataArray(np.zeros((0, 4)), dims=("step", "neuron")),
    ],
)
def test_positive_updates_bad_input(bad):
    with pytest.raises(InvalidInputError):
        positive_updates(bad)


def test_top_count_rounding():
    # ceil(q·N) with q·N rounded first: 0.01·300 is 3.0000000000000004 in floating point
    assert top_count(300, 0.01) == 3
    assert top_count(301, 0.01) == 4  # 3.01 → 4
    assert top_count(4, 0.01) == 1  # at least one unit
    assert top_count(4, 0.26) == 2  # 1.04 → 2
    assert top_count(4, 1.0) == 4
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(InvalidInputError):
            top_count(4, bad)


def test_backbone_share_by_hand():
    pu = positive_updates(scores())
    assert backbone_share(pu, q=0.25) == pytest.approx(5 / 10)  # top 1 unit: 5
    assert backbone_share(pu, q=0.01) == pytest.approx(5 / 10)  # still 1 unit
    assert backbone_share(pu, q=0.26) == pytest.approx(8 / 10)  # top 2: 5 + 3
    assert backbone_share(pu, q=0.5) == pytest.approx(8 / 10)
    assert backbone_share(pu, q=1.0) == pytest.approx(1.0)


def test_backbone_share_ties_at_the_cut():
    # [4, 4, 1, 1], total 10: the top unit is either 4, share 0.4 whichever is taken
    for order in ([4.0, 4.0, 1.0, 1.0], [1.0, 4.0, 1.0, 4.0], [1.0, 1.0, 4.0, 4.0]):
        assert backbone_share(np.array(order), q=0.25) == pytest.approx(0.4)
        assert backbone_share(np.array(order), q=0.75) == pytest.approx(0.9)  # 4 + 4 + 1


def test_backbone_share_nan_counts_as_zero_unit():
    # [NaN, 5, 5, 0] = [0, 5, 5, 0]: N = 4, top 1 = 5 of 10
    assert backbone_share(np.array([np.nan, 5.0, 5.0, 0.0]), q=0.25) == pytest.approx(0.5)


def test_all_zero_updates_give_nan_without_warnings():
    zero = np.zeros(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(backbone_share(zero))
        assert np.isnan(backbone_curve(zero).values).all()
        assert np.isnan(lorenz(zero).values).all()
        assert np.isnan(lorenz(zero, points=11).values).all()
        assert math.isnan(gini(zero))
        assert math.isnan(normalized_entropy(zero))


def test_negative_or_empty_updates_refused():
    with pytest.raises(InvalidInputError, match="positive_updates"):
        backbone_share(np.array([1.0, -1.0]))
    with pytest.raises(InvalidInputError):
        gini(np.array([]))


def test_backbone_curve_by_hand():
    curve = backbone_curve(np.array(PU), qs=[0.25, 0.5, 1.0])
    assert curve.dims == ("q",)
    assert curve.values.tolist() == pytest.approx([0.5, 0.8, 1.0])
    assert curve["n_top"].values.tolist() == [1, 2, 4]
    default = backbone_curve(np.array(PU))
    assert default.sel(q=0.01).item() == pytest.approx(backbone_share(np.array(PU), 0.01))


def test_lorenz_by_hand():
    # sorted ascending [0, 2, 3, 5] / 10 → cumulative [0, 0, 0.2, 0.5, 1]
    curve = lorenz(np.array(PU))
    assert curve["population"].values.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.values.tolist() == pytest.approx([0.0, 0.0, 0.2, 0.5, 1.0])
    # read at 0, 0.5, 1 (break points): 0, 0.2, 1; at 0.125 halfway between 0 and 0
    assert lorenz(np.array(PU), points=3).values.tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert lorenz(np.array(PU), points=9).values[3] == pytest.approx(0.1)  # x=0.375


def test_gini_by_hand():
    # Σ_i Σ_j |x_i − x_j| over [3, 2, 0, 5]: unordered 1+3+2+2+3+5 = 16, ordered 32;
    # / (2 · N² · mean) = 32 / (2 · 16 · 2.5) = 0.4. Lorenz area (1/8)(0+0.2+0.7+1.5) = 0.3.
    assert gini(np.array(PU)) == pytest.approx(0.4)
    assert gini(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(0.0)
    assert gini(np.array([0.0, 0.0, 0.0, 4.0])) == pytest.approx(0.75)  # (N−1)/N
    assert gini(np.array([7.0])) == pytest.approx(0.0)


def test_gini_is_one_minus_twice_the_lorenz_area():
    rng = np.random.default_rng(3)
    for _ in range(5):
        v = rng.exponential(size=37) * (rng.random(37) < 0.5)
        curve = lorenz(v)
        x, y = curve["population"].values, curve.values
        area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
        assert gini(v) == pytest.approx(1 - 2 * area)
        pairs = np.abs(v[:, None] - v[None, :]).sum()
        assert gini(v) == pytest.approx(pairs / (2 * v.size**2 * v.mean()))


def test_normalized_entropy_by_hand():
    # p = [0.3, 0.2, 0, 0.5]: H = −(0.3 ln 0.3 + 0.2 ln 0.2 + 0.5 ln 0.5) ≈ 1.029653;
    # / ln 4 ≈ 1.386294 → ≈ 0.742738
    expected = -(0.3 * math.log(0.3) + 0.2 * math.log(0.2) + 0.5 * math.log(0.5)) / math.log(4)
    assert normalized_entropy(np.array(PU)) == pytest.approx(expected)
    assert normalized_entropy(np.array(PU)) == pytest.approx(0.742738, abs=1e-6)
    assert normalized_entropy(np.ones(6)) == pytest.approx(1.0)
    assert normalized_entropy(np.array([0.0, 0.0, 2.0])) == pytest.approx(0.0)
    assert math.isnan(normalized_entropy(np.array([3.0])))  # log 1 = 0


def test_unmeasured_step_is_left_out():
    # a step where the measure was not run reads NaN everywhere: skipped, not read as 0
    # (reading it as 0 would add [3, 2, 1, 5] of spurious updates from step 30)
    with_gap = np.concatenate([S[:2], np.full((1, 4), np.nan), S[2:]])
    pu = positive_updates(scores(with_gap, steps=(0, 10, 15, 20)))
    assert pu.values.tolist() == PU
    with pytest.raises(InvalidInputError, match="no checkpoint"):
        positive_updates(scores(np.full((2, 4), np.nan), steps=(0, 1)))
