"""summarize_run, headline and compare on synthetic MoE and dense stores."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from mechmoe.analysis import (
    backbone_share,
    compare,
    consolidation,
    headline,
    positive_updates,
    summarize_run,
)
from mechmoe.analysis.testing import toy_store
from mechmoe.core.errors import InvalidInputError


def same(a: dict, b: dict) -> bool:
    """Dict equality with NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k]))
        for k in a
    )


@pytest.fixture(scope="module")
def moe():
    return toy_store(moe=True)


@pytest.fixture(scope="module")
def dense():
    return toy_store(moe=False)


def test_summary_of_moe_store(moe):
    s = summarize_run(moe, q=0.05, tau=0.8)
    pu = positive_updates(moe["neuron_score"])
    assert float(s["backbone_share"]) == pytest.approx(backbone_share(pu, 0.05))
    np.testing.assert_allclose(s["positive_updates"].values, pu.values)
    cons = consolidation(moe["neuron_score"], k=s.attrs["analysis_jaccard_k"], tau=0.8)
    np.testing.assert_allclose(s["spearman_final"].values, cons["spearman_final"].values)
    np.testing.assert_equal(float(s["consolidation_step"]), float(cons["consolidation_step"]))
    # the backbone size at q = 0.05 of 2 · 4 · 16 = 128 neurons: ceil(6.4) = 7
    assert s.attrs["analysis_jaccard_k"] == 7
    assert 0.05 in s["q"].values and s["lorenz"].sizes["population"] == 101
    for name in ("router_saturation", "coactivation", "relation_routing", "drop_top", "hit"):
        assert name in s
    assert s.attrs["model"] == "toy-moe" and s.attrs["analysis_tau"] == 0.8
    assert s.attrs["absent"] == ""


def test_headline_drop_by_hand(moe):
    h = headline(summarize_run(moe))
    final = moe.isel(step=-1).sel(n=10)
    base = float(final["robust_hit_base"])
    assert h["hit_drop_top"] == pytest.approx(1 - float(final["robust_hit_top"]) / base)
    random = 1 - final["robust_hit_random"].values / base
    assert h["hit_drop_random"] == pytest.approx(random.mean())
    assert h["hit_drop_random_std"] == pytest.approx(random.std(ddof=1))
    assert h["drop_step"] == 400 and h["n_masked"] == 10 and h["hit_k"] == 10
    assert same(h, headline(moe))  # a store is summarised with the same defaults


def test_dense_store_summary(dense):
    s = summarize_run(dense)
    assert "router_saturation" not in s and "coactivation" not in s
    assert "dense model, no router" in s.attrs["absent"]
    assert s["positive_updates"].sizes["expert"] == 1
    assert math.isfinite(float(s["backbone_share"]))


def test_missing_measures_are_named(moe):
    partial = moe.drop_vars(
        [
            "neuron_score",
            "robust_drop_top",
            "robust_drop_random",
            "robust_hit_top",
            "robust_hit_random",
            "routing_choice",
        ]
    )
    s = summarize_run(partial)
    h = headline(s)
    assert math.isnan(h["backbone_share"]) and math.isnan(h["consolidation_step"])
    assert math.isnan(h["hit_drop_top"])
    assert "neuron_score" in s.attrs["absent"] and "robust" in s.attrs["absent"]
    assert "routing_choice" in s.attrs["absent"]


def test_unmeasured_n_masked(moe):
    s = summarize_run(moe, n_masked=3)
    assert math.isnan(float(s["hit_drop_top"])) and "n=3" in s.attrs["absent"]


def test_compare_side_by_side(moe, dense):
    c = compare(moe, dense)
    assert c["run"].values.tolist() == ["MoE", "dense"]
    assert c["backbone_share"].sel(run="dense") == pytest.approx(headline(dense)["backbone_share"])
    assert c["model"].values.tolist() == ["toy-moe", "toy-dense"]
    with pytest.raises(InvalidInputError):
        compare(moe, dense, names=("a", "a"))


def test_summary_round_trips_through_save_result(moe, tmp_path):
    from mechmoe.ops.results import open_result, save_result

    s = summarize_run(moe)
    for path in (tmp_path / "stats.nc", tmp_path / "stats.zarr"):
        save_result(s, path)
        back = open_result(path)
        assert same(headline(back), headline(s))
        np.testing.assert_allclose(back["coactivation"].values, s["coactivation"].values)


def test_bad_options(moe):
    with pytest.raises(InvalidInputError):
        summarize_run(moe, q=0.0)
    with pytest.raises(InvalidInputError):
        summarize_run(moe, n_masked=0)


def test_analysis_does_not_import_torch():
    code = (
        "import sys\n"
        "import mechmoe.analysis as a\n"
        "from mechmoe.analysis.testing import toy_store\n"
        "s = a.summarize_run(toy_store(moe=True))\n"
        "a.headline(s); a.compare(toy_store(moe=True), toy_store(moe=False))\n"
        "bad = sorted(m for m in ('torch', 'transformers', 'nnsight') if m in sys.modules)\n"
        "print('heavy:', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "heavy: []" in out.stdout


def test_headline_drop_read_at_last_measured_step(moe):
    # robustness not run at the final step (added later without it): read at step 300
    gap = moe.copy()
    for name in ("robust_drop_top", "robust_drop_random"):
        gap[name] = gap[name].where(gap["step"] < 400)
    h = headline(summarize_run(gap))
    assert h["drop_step"] == 300
    at = moe.sel(step=300, n=10)
    assert h["hit_drop_top"] == pytest.approx(float(at["robust_drop_top"]))


def test_all_nan_scores_are_named_absent(moe):
    blank = moe.assign(neuron_score=moe["neuron_score"] * np.nan)
    s = summarize_run(blank)
    assert math.isnan(float(s["backbone_share"])) and "NaN at every step" in s.attrs["absent"]
