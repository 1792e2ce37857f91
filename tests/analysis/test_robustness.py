"""Robustness curves: relative HIT@k drop of top-n vs random heads, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from mechmoe.analysis import NotApplicableError, robustness_curves


def store(base=(0.5, 0.8), with_drops=False):
    # step 0: base 0.5, top-10 masked 0.25 → drop 0.5; random 0.45, 0.35 → 0.1, 0.3
    # step 1: base 0.8, top-10 masked 0.6 → 0.25; random 0.8, 0.72 → 0, 0.1
    ds = xr.Dataset(
        {
            "robust_hit_base": ("step", list(base)),
            "robust_hit_top": (("step", "n"), [[0.25], [0.6]]),
            "robust_hit_random": (("step", "n", "seed"), [[[0.45, 0.35]], [[0.8, 0.72]]]),
        },
        coords={"step": [0, 100], "n": [10], "seed": [0, 1]},
    )
    ds["robust_hit_top"].attrs["k"] = 10
    if with_drops:
        ds["robust_drop_top"] = 1 - ds["robust_hit_top"] / ds["robust_hit_base"]
        ds["robust_drop_random"] = 1 - ds["robust_hit_random"] / ds["robust_hit_base"]
    return ds


@pytest.mark.parametrize("with_drops", [False, True])
def test_drops_by_hand(with_drops):
    r = robustness_curves(store(with_drops=with_drops)).sel(n=10)
    assert r["drop_top"].values.tolist() == pytest.approx([0.5, 0.25])
    assert r["drop_random_mean"].values.tolist() == pytest.approx([0.2, 0.05])
    # sample std of [0.1, 0.3]: sqrt(2 · 0.1² / 1) = 0.141421; of [0, 0.1]: 0.070711
    assert r["drop_random_std"].values.tolist() == pytest.approx([0.1414214, 0.0707107])
    assert r["excess_drop"].values.tolist() == pytest.approx([0.3, 0.2])
    assert r["hit_base"].values.tolist() == [0.5, 0.8]


def test_k_recorded():
    assert robustness_curves(store()).attrs["k"] == 10


def test_zero_base_gives_nan_drop():
    r = robustness_curves(store(base=(0.0, 0.8)))
    assert math.isnan(r["drop_top"].values[0, 0]) and r["drop_top"].values[1, 0] == pytest.approx(
        0.25
    )


def test_single_seed_std_is_nan():
    r = robustness_curves(store().isel(seed=[0]))
    assert np.isnan(r["drop_random_std"].values).all()
    assert r["drop_random_mean"].values[:, 0].tolist() == pytest.approx([0.1, 0.0])


def test_missing_measure():
    with pytest.raises(NotApplicableError, match="robustness"):
        robustness_curves(xr.Dataset({"hit": ("step", [0.1])}))
