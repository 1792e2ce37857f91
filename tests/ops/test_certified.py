"""Certified mode: every score within its reported bound of a float64 reference.

The bound is proven (docs/attribution.md); these tests check it on random data where it
is large enough to be tested against rounding (so a wrong bound would fail), at the two
advertised tolerances, on adversarial directions with huge coefficients (which must fall
back to the exact sum, and be counted), and end to end on tiny models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechmoe.ops._lpi_kernels import _certified_log_sum, shared_direction_lpi
from mechmoe.ops.attribution import attribute
from mechmoe.testing import tiny_model

PROMPTS = ["The capital of France is", "Water is made of", "One two three four"]
#: fp32 rounding of the kernels' sums (the exact path has the same)
ROUND = 2e-6


def _reference(U, W_U, c, logp, target):
    P = U.double() @ W_U.double().T
    z = logp.double()[:, None, :] + c.double()[:, :, None] * P[None]
    new = torch.log_softmax(z, dim=-1)
    idx = target[:, None, None].expand(-1, c.shape[1], 1)
    return new.gather(2, idx)[..., 0] - logp.double().gather(1, target[:, None])


def _log_s_reference(U, W_U, c, logp):
    P = U.double() @ W_U.double().T
    return torch.logsumexp(logp.double()[:, None, :] + c.double()[:, :, None] * P[None], dim=-1)


def _data(seed, n=6, k=40, d=24, vocab=3000, c_scale=0.3):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(k, d, generator=g)
    W_U = torch.randn(vocab, d, generator=g) / d**0.5
    c = torch.randn(n, k, generator=g) * c_scale
    logp = torch.log_softmax(torch.randn(n, vocab, generator=g) * 2.5, -1)
    target = torch.randint(0, vocab, (n,), generator=g)
    return U, W_U, c, logp, target


@pytest.mark.parametrize("c_scale", [0.05, 0.3, 1.0])
def test_moment_bound_holds_where_it_is_large(c_scale):
    # No tolerance filter: the raw bound must cover the truncation error even where it
    # is far above rounding (large coefficients), so a wrong bound cannot pass.
    U, W_U, c, logp, _ = _data(1, c_scale=c_scale)
    U, W_U, c, logp = U.double(), W_U.double(), c.double(), logp.double()
    log_s, bound, todo = _certified_log_sum(
        U, W_U, c, logp.exp(), tolerance=float("inf"), budget=2**26
    )
    want = _log_s_reference(U, W_U, c, logp)
    ok = ~todo
    assert ok.any()
    err = (log_s.double() - want).abs()
    assert (err[ok] <= bound.double()[ok] * (1 + 1e-6) + 1e-6).all()
    if c_scale >= 0.3:
        assert float(bound[ok].max()) > 1e-4  # the test exercises a non-trivial bound
        assert float(err[ok].max()) > 1e-5


@pytest.mark.parametrize("tolerance", [1e-4, 1e-6])
def test_certified_scores_within_bound_at_both_settings(tolerance):
    U, W_U, c, logp, target = _data(2)
    stats: dict[str, int] = {}
    got, bound = shared_direction_lpi(
        U, W_U, c, logp, target, precision="certified", tolerance=tolerance, stats=stats
    )
    want = _reference(U, W_U, c, logp, target)
    assert float(bound.max()) <= tolerance
    assert ((got.double() - want).abs() <= bound.double() + ROUND).all()
    assert stats["pairs"] == c.numel()
    assert 0 <= stats["fallback"] < c.numel()
    assert (bound > 0).any()


def test_adversarial_coefficients_fall_back_to_exact():
    U, W_U, c, logp, target = _data(3)
    c[:, :5] *= 200.0  # |c·P| of tens: the Taylor remainder cannot be certified
    U[5] *= 300.0  # one direction with a huge norm
    stats: dict[str, int] = {}
    got, bound = shared_direction_lpi(
        U, W_U, c, logp, target, precision="certified", tolerance=1e-6, stats=stats
    )
    want = _reference(U, W_U, c, logp, target)
    n = c.shape[0]
    assert stats["fallback"] >= 6 * n  # every pair of the six adversarial directions
    assert (bound[:, :6] == 0).all()  # summed exactly
    torch.testing.assert_close(got[:, :6].double(), want[:, :6], atol=2e-4, rtol=1e-5)
    slack = torch.where(bound == 0, 2e-4, ROUND).double()  # exact sums of big values: fp32
    assert ((got.double() - want).abs() <= bound.double() + slack).all()


def test_bounded_is_the_old_name_of_certified():
    U, W_U, c, logp, target = _data(4)
    a = shared_direction_lpi(U, W_U, c, logp, target, precision="certified")
    b = shared_direction_lpi(U, W_U, c, logp, target, precision="bounded")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_underflowing_probabilities_are_summed_exactly():
    U, W_U, c, logp, target = _data(5)
    logits = torch.randn(logp.shape) * 3
    logits[:, 0] += 120.0  # most p below fp32's range: the moments would drop them
    logp = torch.log_softmax(logits, -1)
    stats: dict[str, int] = {}
    got, bound = shared_direction_lpi(
        U, W_U, c * 50, logp, target, precision="certified", stats=stats
    )
    assert stats["fallback"] == c.numel() and (bound == 0).all()
    torch.testing.assert_close(
        got.double(), _reference(U, W_U, c * 50, logp, target), atol=1e-4, rtol=1e-5
    )


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe", "olmo2"])
@pytest.mark.parametrize("tolerance", [1e-4, 1e-6])
def test_attribute_certified_within_reported_bounds(family, tolerance):
    model = tiny_model(family)
    exact = attribute(model, PROMPTS, level="neuron", per_prompt=True)
    cert = attribute(
        model,
        PROMPTS,
        level="neuron",
        per_prompt=True,
        precision="certified",
        tolerance=tolerance,
    )
    a = cert.attrs
    assert a["precision"] == "certified"
    assert 0.0 <= a["bound"] <= tolerance
    assert 0 <= a["n_fallback"] <= a["n_pairs"] and a["n_pairs"] > 0
    diff = np.abs(cert["score_per_prompt"].values - exact["score_per_prompt"].values)
    assert np.nanmax(diff) <= a["bound"] + ROUND
    # per item: the mean is within the mean of the per-prompt bounds
    mean_diff = np.abs(cert["score"].values - exact["score"].values)
    assert np.nanmax(mean_diff - cert["score_bound"].values) <= ROUND
    assert np.nanmax(cert["prompt_bound"].values) == pytest.approx(a["bound"])
    if "shared_score" in exact:
        sh = np.abs(cert["shared_score"].values - exact["shared_score"].values)
        assert np.nanmax(sh - cert["shared_score_bound"].values) <= ROUND


def test_attribute_adversarial_neuron_is_counted_and_exact():
    model = tiny_model("olmoe")
    w_down = model.ffn_weights(0).w_down
    with torch.no_grad():
        w_down[:, :, 3] *= 1e4  # neuron 3 of every expert in layer 0: huge coefficient
    exact = attribute(model, PROMPTS, level="neuron", per_prompt=True)
    cert = attribute(
        model, PROMPTS, level="neuron", per_prompt=True, precision="certified", tolerance=1e-6
    )
    chosen = ~np.isnan(exact["score_per_prompt"].values[:, 0, :, 3])
    # most of its (prompt, expert) pairs cannot be certified (one with a near-zero
    # activation may be); those are summed exactly and counted
    assert cert.attrs["n_fallback"] >= int(chosen.sum()) // 2 > 0
    np.testing.assert_allclose(
        cert["score_per_prompt"].values[:, 0, :, 3][chosen],
        exact["score_per_prompt"].values[:, 0, :, 3][chosen],
        atol=1e-4,
        rtol=1e-5,
    )
    assert np.nanmax(cert["score_bound"].values[0, :, 3]) <= 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["exact", "certified"])
def test_kernels_run_on_cuda(precision):
    U, W_U, c, logp, target = _data(6)
    c[:, :3] *= 200.0  # some pairs fall back in certified mode
    stats: dict[str, int] = {}
    got, bound = shared_direction_lpi(
        U.cuda(),
        W_U.cuda(),
        c.cuda(),
        logp.cuda(),
        target.cuda(),
        precision=precision,
        tolerance=1e-6,
        stats=stats,
    )
    assert got.is_cuda and bound.is_cuda
    want = _reference(U, W_U, c, logp, target)
    slack = torch.where(bound.cpu() == 0, 2e-4, ROUND).double()
    assert ((got.cpu().double() - want).abs() <= bound.cpu().double() + slack).all()
