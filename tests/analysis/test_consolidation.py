"""Consolidation statistics against hand calculations and slow pure-Python references."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import xarray as xr

from mechmoe.analysis import consolidation
from mechmoe.analysis.consolidation import consolidation_step, top_set
from mechmoe.core.errors import InvalidInputError

# 4 steps × 4 neurons; the final checkpoint is [1, 2, 3, 4].
S = np.array(
    [
        [4.0, 3.0, 2.0, 1.0],  # reversed: rho = tau = −1 vs final
        [1.0, 2.0, 3.0, 4.0],  # same order: 1
        [1.0, 2.0, 4.0, 3.0],  # last two swapped: Σd² = 2, rho = 1 − 6·2/(4·15) = 0.8;
        #                        one discordant pair of 6: tau = (5 − 1)/6 = 2/3
        [1.0, 2.0, 3.0, 4.0],
    ]
)
STEPS = [0, 10, 20, 30]


def da(values, steps=STEPS):
    return xr.DataArray(
        np.asarray(values, dtype=float),
        dims=("step", "neuron"),
        coords={"step": list(steps), "tokens": ("step", [float(s) * 2 for s in steps])},
    )


def test_correlations_by_hand():
    c = consolidation(da(S), k=2, tau=0.7)
    assert c["spearman_final"].values.tolist() == pytest.approx([-1.0, 1.0, 0.8, 1.0])
    assert c["kendall_final"].values.tolist() == pytest.approx([-1.0, 1.0, 2 / 3, 1.0])
    # against the previous step: NaN, S1 vs S0 = −1, S2 vs S1 = 0.8, S3 vs S2 = 0.8
    prev = c["spearman_prev"].values
    assert math.isnan(prev[0]) and prev[1:].tolist() == pytest.approx([-1.0, 0.8, 0.8])
    kprev = c["kendall_prev"].values
    assert math.isnan(kprev[0]) and kprev[1:].tolist() == pytest.approx([-1.0, 2 / 3, 2 / 3])
    assert c["tokens"].values.tolist() == [0.0, 20.0, 40.0, 60.0]


def test_jaccard_by_hand():
    # top-2 sets: S0 {0, 1}; S1, S2, S3 {2, 3}
    c = consolidation(da(S), k=2)
    assert c["jaccard_final"].values.tolist() == [0.0, 1.0, 1.0, 1.0]
    jp = c["jaccard_prev"].values
    assert math.isnan(jp[0]) and jp[1:].tolist() == [0.0, 1.0, 1.0]
    assert c.attrs["k"] == 2


def test_consolidation_step_by_hand():
    # rho vs final = [−1, 1, 0.8, (1 final, left out)]
    assert int(consolidation(da(S), k=2, tau=0.7)["consolidation_step"]) == 10
    assert math.isnan(float(consolidation(da(S), k=2, tau=0.9)["consolidation_step"]))  # never
    assert int(consolidation(da(S), k=2, tau=-1.0)["consolidation_step"]) == 0
    # a dip breaks the run: [0.95, 0.5, 0.92, 0.97 | 1] → from step 3
    rho = np.array([0.95, 0.5, 0.92, 0.97, 1.0])
    assert consolidation_step(rho, np.arange(1, 6), 0.9) == 3.0
    assert consolidation_step(np.array([0.95, np.nan, 0.99, 1.0]), np.arange(4), 0.9) == 2.0
    assert math.isnan(consolidation_step(np.array([1.0]), np.array([7]), 0.9))


def test_default_k_is_backbone_size():
    c = consolidation(da(S))
    assert c.attrs["k"] == 1  # max(1, ceil(0.01 · 4))


def test_ties_spearman_kendall_by_hand():
    # S0 = [1, 1, 2, 3] (a tie), final [1, 2, 3, 4]. Average ranks [1.5, 1.5, 3, 4]:
    # deviations a = [−1, −1, .5, 1.5], b = [−1.5, −.5, .5, 1.5]; Σab = 4.5, Σa² = 4.5,
    # Σb² = 5 → rho = 4.5 / sqrt(4.5 · 5) = sqrt(0.9).
    # tau-b: 5 concordant, 0 discordant, 1 pair tied in S0 only → 5 / sqrt(5 · 6).
    c = consolidation(da([[1, 1, 2, 3], [1, 2, 3, 4]], steps=[0, 1]), k=1)
    assert c["spearman_final"].values[0] == pytest.approx(math.sqrt(0.9))
    assert c["kendall_final"].values[0] == pytest.approx(5 / math.sqrt(30))


def test_top_set_ties_included():
    assert top_set(np.array([5.0, 3.0, 3.0, 1.0]), 2).tolist() == [True, True, True, False]
    # final [5, 3, 3, 1] → {0, 1, 2}; S0 [5, 4, 0, 0] → {0, 1}: Jaccard 2/3
    c = consolidation(da([[5, 4, 0, 0], [5, 3, 3, 1]], steps=[0, 1]), k=2)
    assert c["jaccard_final"].values[0] == pytest.approx(2 / 3)
    with pytest.raises(InvalidInputError):
        top_set(np.zeros(3), 4)


def test_nan_is_unchosen_zero():
    # [NaN, 1, 2, 3] reads as [0, 1, 2, 3]: same order as the final [1, 2, 3, 4]
    c = consolidation(da([[np.nan, 1, 2, 3], [1, 2, 3, 4]], steps=[0, 1]), k=1)
    assert c["spearman_final"].values[0] == pytest.approx(1.0)
    assert c["kendall_final"].values[0] == pytest.approx(1.0)


def test_constant_vectors_give_nan_without_warnings():
    # step 0 all zero (nothing chosen): no ranking → NaN; its top-1 "set" is every unit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = consolidation(da([[0, 0, 0, 0], [1, 2, 3, 4]], steps=[0, 1]), k=1)
        assert math.isnan(c["spearman_final"].values[0])
        assert math.isnan(c["kendall_final"].values[0])
        assert c["jaccard_final"].values[0] == pytest.approx(1 / 4)
        flat = consolidation(da([[1, 2, 3, 4], [0, 0, 0, 0]], steps=[0, 1]), k=1)
        assert np.isnan(flat["spearman_final"].values).all()
        assert math.isnan(float(flat["consolidation_step"]))


def test_single_checkpoint():
    c = consolidation(da(S[:1], steps=[5]), k=2)
    assert c["spearman_final"].values.tolist() == [1.0]
    assert math.isnan(c["spearman_prev"].values[0])
    assert c["jaccard_final"].values.tolist() == [1.0]
    assert math.isnan(float(c["consolidation_step"]))


def test_bad_options():
    with pytest.raises(InvalidInputError):
        consolidation(da(S), tau=1.5)
    with pytest.raises(InvalidInputError):
        consolidation(da(S), k=5)


# ---- slow pure-Python references ---------------------------------------------------------
def _avg_ranks(x):
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb)


def slow_spearman(a, b):
    return _pearson(_avg_ranks(a), _avg_ranks(b))


def slow_kendall_tau_b(a, b):
    conc = disc = tie_a = tie_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da_, db_ = a[i] - a[j], b[i] - b[j]
        if da_ == 0 and db_ == 0:
            continue
        if da_ == 0:
            tie_a += 1
        elif db_ == 0:
            tie_b += 1
        elif (da_ > 0) == (db_ > 0):
            conc += 1
        else:
            disc += 1
    return (conc - disc) / math.sqrt((conc + disc + tie_a) * (conc + disc + tie_b))


def test_against_slow_references_with_ties():
    rng = np.random.default_rng(11)
    values = rng.integers(0, 5, size=(5, 40)).astype(float)  # small range: many ties
    values[1, :5] = np.nan  # unchosen
    c = consolidation(da(values, steps=[0, 1, 2, 3, 4]), k=6)
    final = values[-1].tolist()
    for t in range(5):
        cur = np.nan_to_num(values[t]).tolist()
        assert c["spearman_final"].values[t] == pytest.approx(slow_spearman(cur, final))
        assert c["kendall_final"].values[t] == pytest.approx(slow_kendall_tau_b(cur, final))
        if t:
            prev = np.nan_to_num(values[t - 1]).tolist()
            assert c["spearman_prev"].values[t] == pytest.approx(slow_spearman(cur, prev))
            assert c["kendall_prev"].values[t] == pytest.approx(slow_kendall_tau_b(cur, prev))
            a = {i for i, v in enumerate(cur) if v >= sorted(cur)[-6]}
            b = {i for i, v in enumerate(prev) if v >= sorted(prev)[-6]}
            assert c["jaccard_prev"].values[t] == pytest.approx(len(a & b) / len(a | b))


def test_unmeasured_step_reads_nan_and_is_skipped():
    # step 15 was not measured (all NaN): NaN there; step 20 is compared with step 10
    gap = np.concatenate([S[:2], np.full((1, 4), np.nan), S[2:]])
    c = consolidation(da(gap, steps=[0, 10, 15, 20, 30]), k=2, tau=0.7)
    assert c["step"].values.tolist() == [0, 10, 15, 20, 30]
    sf = c["spearman_final"].values
    assert math.isnan(sf[2]) and sf[[0, 1, 3, 4]].tolist() == pytest.approx([-1, 1, 0.8, 1])
    assert c["spearman_prev"].values[3] == pytest.approx(0.8)  # S2 vs S1
    assert int(c["consolidation_step"]) == 10
    assert c["tokens"].values.tolist() == [0.0, 20.0, 30.0, 40.0, 60.0]


def test_matches_scipy_directly():
    from scipy import stats

    rng = np.random.default_rng(5)
    values = np.round(rng.normal(size=(4, 300)), 1)  # rounded: ties
    c = consolidation(da(values, steps=[0, 1, 2, 3]))
    for t in range(4):
        ref_s = stats.spearmanr(values[t], values[-1]).statistic
        ref_k = stats.kendalltau(values[t], values[-1]).statistic
        assert c["spearman_final"].values[t] == pytest.approx(ref_s, abs=1e-12)
        assert c["kendall_final"].values[t] == pytest.approx(ref_k, abs=1e-12)
