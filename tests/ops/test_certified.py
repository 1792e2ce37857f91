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

from mechmoe.ops._lpi_bounds import certified_log_sum, tail_bound_log_sum
from mechmoe.ops._lpi_kernels import (
    KernelCounts,
    TailContext,
    UnembedStats,
    shared_direction_blocks,
    shared_direction_lpi,
)
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
    log_s, bound, todo = certified_log_sum(
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


def _tail_inputs(U, W_U, logp):
    return {"unembed": UnembedStats.of(W_U), "tail": TailContext(logp.exp(), W_U)}


@pytest.mark.parametrize("c_scale", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("flat", [False, True])
def test_tail_bound_holds_where_it_is_large(c_scale, flat):
    # The first tier forms P only at the head's columns; its raw bound (no tolerance
    # filter) must still cover the error where it is far above rounding.
    U, W_U, c, logp, _ = _data(7, c_scale=c_scale)
    if flat:  # a near-uniform base distribution, like a random model's
        logp = torch.log_softmax(torch.randn(logp.shape) * 0.3, -1)
    log_s, bound, todo = tail_bound_log_sum(
        U,
        W_U,
        c,
        logp,
        logp.exp(),
        **_tail_inputs(U, W_U, logp),
        tolerance=float("inf"),
        budget=2**26,
    )
    want = _log_s_reference(U, W_U, c, logp)
    ok = ~todo
    assert ok.float().mean() > 0.5
    err = (log_s.double() - want).abs()
    assert (err[ok] <= bound.double()[ok] + ROUND).all()
    if c_scale >= 0.3:
        assert float(bound[ok].max()) > 1e-4  # a non-trivial bound is exercised
        assert float(err[ok].max()) > 1e-5


@pytest.mark.parametrize(("group", "top", "mid"), [(2, 8, 0), (3, 8, 100), (4, 64, 5000)])
def test_tail_bound_holds_for_every_grouping(group, top, mid):
    # Several prompt groups (each its own head), a second-moment term with no, some or
    # all tail tokens taken one by one: every variant of the bound must hold.
    U, W_U, c, logp, _ = _data(10, n=7, c_scale=0.5)
    ctx = TailContext(logp.exp(), W_U, group=group, top=top, mid=mid)
    assert len(ctx.heads) == -(-7 // group)
    sub = torch.tensor([0, 2, 3, 6])
    log_s, bound, todo = tail_bound_log_sum(
        U,
        W_U,
        c[sub],
        logp,
        logp.exp(),
        unembed=UnembedStats.of(W_U),
        tail=ctx,
        prompts=sub,
        tolerance=float("inf"),
        budget=2**26,
    )
    want = _log_s_reference(U, W_U, c[sub], logp[sub])
    err = (log_s.double() - want).abs()
    assert (~todo).float().mean() > 0.5
    assert (err[~todo] <= bound.double()[~todo] + ROUND).all()
    assert float(err[~todo].max()) > 1e-5  # a non-trivial error is bounded


def test_tail_bound_needs_no_moments_on_a_flat_distribution():
    # Near-uniform base probabilities and small coefficients: the tail bound certifies
    # every pair, so neither P's moments nor the exact sum are needed.
    U, W_U, c, logp, target = _data(8, c_scale=0.002)
    logp = torch.log_softmax(torch.randn(logp.shape) * 0.3, -1)
    stats = KernelCounts()
    got, bound = shared_direction_lpi(
        U, W_U, c, logp, target, precision="certified", tolerance=1e-4, stats=stats
    )
    assert (stats.pairs, stats.moments, stats.moment_dirs, stats.fallback) == (c.numel(), 0, 0, 0)
    assert stats.p_rows == 0  # no row of P formed
    want = _reference(U, W_U, c, logp, target)
    assert ((got.double() - want).abs() <= bound.double() + ROUND).all()
    assert float(bound.max()) <= 1e-4 and (bound > 0).all()


def test_tail_bound_sums_its_head_exactly():
    # A peaked distribution whose mass sits in the head: the tail bound shrinks with
    # the tail's largest probability, so it is tighter than on a flat one.
    U, W_U, c, logp, _ = _data(9, c_scale=0.3)
    peaked = torch.log_softmax(torch.randn(logp.shape) * 6.0, -1)
    flat = torch.log_softmax(torch.randn(logp.shape) * 0.3, -1)
    bounds = []
    for lp in (peaked, flat):
        log_s, bound, todo = tail_bound_log_sum(
            U,
            W_U,
            c,
            lp,
            lp.exp(),
            **_tail_inputs(U, W_U, lp),
            tolerance=float("inf"),
            budget=2**26,
        )
        want = _log_s_reference(U, W_U, c, lp)
        assert ((log_s.double() - want).abs()[~todo] <= bound.double()[~todo] + ROUND).all()
        bounds.append(float(bound[~todo].median()))
    assert bounds[0] < bounds[1]


@pytest.mark.parametrize("tolerance", [1e-4, 1e-6])
def test_certified_scores_within_bound_at_both_settings(tolerance):
    U, W_U, c, logp, target = _data(2)
    stats = KernelCounts()
    got, bound = shared_direction_lpi(
        U, W_U, c, logp, target, precision="certified", tolerance=tolerance, stats=stats
    )
    want = _reference(U, W_U, c, logp, target)
    assert float(bound.max()) <= tolerance
    assert ((got.double() - want).abs() <= bound.double() + ROUND).all()
    assert stats.pairs == c.numel()
    assert 0 <= stats.fallback <= stats.moments <= c.numel()
    assert stats.fallback < c.numel()
    assert (bound > 0).any()


def test_adversarial_coefficients_fall_back_to_exact():
    U, W_U, c, logp, target = _data(3)
    c[:, :5] *= 200.0  # |c·P| of tens: the Taylor remainder cannot be certified
    U[5] *= 300.0  # one direction with a huge norm
    stats = KernelCounts()
    got, bound = shared_direction_lpi(
        U, W_U, c, logp, target, precision="certified", tolerance=1e-6, stats=stats
    )
    want = _reference(U, W_U, c, logp, target)
    n = c.shape[0]
    assert stats.fallback >= 6 * n  # every pair of the six adversarial directions
    assert (bound[:, :6] == 0).all()  # summed exactly
    torch.testing.assert_close(got[:, :6].double(), want[:, :6], atol=2e-4, rtol=1e-5)
    slack = torch.where(bound == 0, 2e-4, ROUND).double()  # exact sums of big values: fp32
    assert ((got.double() - want).abs() <= bound.double() + slack).all()


@pytest.mark.parametrize("budget", [4 * 2**30, 2**17])
def test_blocks_of_a_layer_share_one_tail_bound(budget):
    # Three "experts" (blocks of directions), each chosen by its own subset of the
    # prompts, one of them by a single prompt and one with adversarial coefficients:
    # scored together (one tail bound over every pair; with a small budget, in several
    # chunks of blocks) each block's scores must lie within their bounds of the float64
    # reference, and the counts must add up over the blocks.
    U0, W_U, _, logp, target = _data(12, n=9, k=30)
    g = torch.Generator().manual_seed(13)
    subsets = [torch.tensor([0, 2, 3, 7, 8]), torch.tensor([4]), torch.tensor([1, 2, 5, 6, 8])]
    blocks = []
    for j, rows in enumerate(subsets):
        U = U0 * (1 + j) if j else U0
        c = torch.randn(rows.numel(), U.shape[0], generator=g) * 0.3
        if j == 2:
            c[:, :4] *= 200.0  # must fall back to the exact sum
        blocks.append((U, c, rows))
    stats = KernelCounts()
    got = shared_direction_blocks(
        blocks, W_U, logp, target, tolerance=1e-6, budget=budget, stats=stats
    )
    assert len(got) == len(blocks)
    assert stats.pairs == sum(c.numel() for _, c, _ in blocks)
    assert stats.fallback >= 4 * subsets[2].numel()
    for (U, c, rows), (scores, bound) in zip(blocks, got, strict=True):
        assert scores.shape == c.shape == bound.shape
        want = _reference(U, W_U, c, logp[rows], target[rows])
        # exact sums of large values (|score| in the hundreds): fp32 rounding of them
        slack = torch.where(bound == 0, 2e-4 + 1e-6 * want.abs(), ROUND).double()
        assert ((scores.double() - want).abs() <= bound.double() + slack).all()
        assert float(bound.max()) <= 1e-6
        # the same block scored alone: the same certified scores, within the bounds
        alone, b_alone = shared_direction_lpi(
            U, W_U, c, logp[rows], target[rows], precision="certified", tolerance=1e-6
        )
        gap = (alone.double() - scores.double()).abs()
        assert (gap <= bound.double() + b_alone.double() + 2 * slack).all()


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
    stats = KernelCounts()
    got, bound = shared_direction_lpi(
        U, W_U, c * 50, logp, target, precision="certified", stats=stats
    )
    assert stats.fallback == c.numel() and (bound == 0).all()
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
    stats = KernelCounts()
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
    if precision == "certified":  # a layer's experts together: two blocks on the device
        rows = [torch.tensor([0, 2, 3]), torch.tensor([1, 4, 5])]
        blocks = [(U.cuda(), c[r].cuda(), r.cuda()) for r in rows]
        out = shared_direction_blocks(
            blocks, W_U.cuda(), logp.cuda(), target.cuda(), tolerance=1e-6
        )
        for r, (s_b, b_b) in zip(rows, out, strict=True):
            assert s_b.is_cuda and b_b.is_cuda
            sl = torch.where(b_b.cpu() == 0, 2e-4, ROUND).double()
            err = (s_b.cpu().double() - want[r]).abs()
            assert (err <= b_b.cpu().double() + sl).all()


def test_tail_bound_keeps_full_precision_on_a_large_vocabulary():
    # 50k tokens and a head holding most of the mass: the tail's first moment is a
    # difference of two vocabulary-long sums, so it must be accumulated in float64 or
    # its rounding alone would exceed a 1e-6 bound.
    g = torch.Generator().manual_seed(11)
    n, k, d, vocab = 4, 24, 64, 50_000
    U = torch.randn(k, d, generator=g)
    W_U = torch.randn(vocab, d, generator=g) / d**0.5
    c = torch.randn(n, k, generator=g) * 0.01
    logits = torch.randn(n, vocab, generator=g)
    logits[:, :40] += 9.0  # most of the mass on 40 tokens
    logp = torch.log_softmax(logits, -1)
    target = torch.randint(0, vocab, (n,), generator=g)
    stats = KernelCounts()
    got, bound = shared_direction_lpi(
        U, W_U, c, logp, target, precision="certified", tolerance=1e-6, stats=stats
    )
    assert stats.moments < c.numel()  # the tail bound certified some pairs itself
    want = _reference(U, W_U, c, logp, target)
    assert ((got.double() - want).abs() <= bound.double() + 3e-7).all()


def test_first_moment_product_is_float64_accurate():
    # p W_U on a peaked distribution over 50k tokens with large unembedding rows: every
    # direction's first moment is read from it with cancellation, so it must match a
    # float64 product to float64 rounding, not to fp32's (1e-3 of its terms was measured
    # for an fp32 accumulation over 16k tokens).
    g = torch.Generator().manual_seed(14)
    vocab, d = 50_000, 96
    W_U = torch.randn(vocab, d, generator=g) * 3.0
    logits = torch.randn(5, vocab, generator=g) * 2
    logits[:, :8] += 12.0
    p = torch.softmax(logits, -1)
    want = p.double() @ W_U.double()
    for budget in (4 * 2**30, 2**20):  # one pass, or many blocks of rows
        got = UnembedStats.of(W_U, budget=budget).weighted_sum(p)
        assert got.dtype == torch.float64
        assert float((got - want).abs().max()) <= 1e-12 * float(want.abs().max())


def test_attribute_certified_on_a_large_vocabulary_model():
    # A random OLMoE-shaped model with a real-sized vocabulary (50k): fp32 accumulation
    # over the vocabulary anywhere in the tail bound would show up here above 1e-6.
    from mechmoe.zoo.tiny import random_olmoe

    model = random_olmoe(hidden_size=64, num_layers=2, num_experts=8, top_k=2, intermediate_size=32)
    prompts = PROMPTS * 3
    exact = attribute(model, prompts, level="neuron", per_prompt=True)
    cert = attribute(
        model, prompts, level="neuron", per_prompt=True, precision="certified", tolerance=1e-6
    )
    assert cert.attrs["n_moments"] < cert.attrs["n_pairs"]  # the tail bound did work
    diff = cert["score_per_prompt"].values - exact["score_per_prompt"].values
    assert np.nanmax(np.abs(diff)) <= cert.attrs["bound"] + 3e-7


@pytest.mark.real_weights
def test_attribute_certified_on_real_weights(smollm2):
    # SmolLM2's massive activations and peaked base distributions: most of p on a few
    # head tokens, so the tail's first moment is a small difference of large sums.
    prompts = ["The capital of France is", "Water is made of", "The Eiffel Tower is in"]
    exact = attribute(smollm2, prompts, level="neuron", per_prompt=True)
    cert = attribute(
        smollm2,
        prompts,
        level="neuron",
        per_prompt=True,
        precision="certified",
        tolerance=1e-6,
    )
    assert cert.attrs["kernel"] == exact.attrs["kernel"]
    assert 0 < cert.attrs["n_moments"] < cert.attrs["n_pairs"]
    diff = np.abs(cert["score_per_prompt"].values - exact["score_per_prompt"].values)
    assert np.nanmax(diff) <= cert.attrs["bound"] + ROUND


# ---- diverse prompts: unlike next-token distributions pooled by the tail bound -----------
#: Prompts of several relations and free text (a subset of benchmarks/prompts_diverse.txt).
DIVERSE = [
    "The opposite of cheap is",
    "Hangzhou is a city in the country of",
    "The capital city of Peru is",
    "The official currency of Armenia is the",
    "The plural of leaf is",
    "The first letter of the word table is",
    "Once upon a time, in a small village by the sea, there lived a",
    "import numpy as np; x = np.zeros((3, 3)); print(x.",
]


def _diverse_data(seed, n=12, k=48, d=32, vocab=6000):
    """Prompts whose distributions peak on different tokens, at different temperatures.

    The tail bound pools them, so its pooled second-moment terms mix unlike
    distributions: the case that leaves most work to the later tiers.
    """
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(k, d, generator=g)
    W_U = torch.randn(vocab, d, generator=g) / d**0.5
    logits = torch.randn(n, vocab, generator=g)
    for b in range(n):
        peak = torch.randperm(vocab, generator=g)[:200]
        logits[b, peak] += 2.0 + 4.0 * b / n  # each prompt its own likely tokens
        logits[b] *= 0.5 + 2.0 * ((b * 7) % n) / n  # flat to peaked
    logp = torch.log_softmax(logits, -1)
    c = torch.randn(n, k, generator=g) * torch.logspace(-2, 0, k)  # small to large
    target = torch.randint(0, vocab, (n,), generator=g)
    return U, W_U, c, logp, target


@pytest.mark.parametrize("tolerance", [1e-4, 1e-6])
def test_certified_within_bound_on_diverse_distributions(tolerance):
    U, W_U, c, logp, target = _diverse_data(21)
    stats = KernelCounts()
    got, bound = shared_direction_lpi(
        U, W_U, c, logp, target, precision="certified", tolerance=tolerance, stats=stats
    )
    want = _reference(U, W_U, c, logp, target)
    err = (got.double() - want).abs()
    assert float(bound.max()) <= tolerance
    assert (err <= bound.double() + ROUND).all()
    # every tier did some of the work: the tail bound, the moments, the exact sum
    assert 0 < stats.moments < stats.pairs
    assert 0 < stats.fallback < stats.moments
    assert stats.p_rows >= stats.moment_dirs > 0  # P formed only for what tier 1 left


@pytest.mark.parametrize("order", [2, 3])
def test_moment_remainders_hold_where_they_are_large(order):
    # Both forms of the second tier (m2 with a third-order remainder, m2 and m3 with a
    # fourth-order one), with no tolerance filter, against float64 sums.
    from mechmoe.ops._lpi_bounds import moment_bound, moments

    U, W_U, c, logp, _ = _diverse_data(5, n=6, k=40)
    P = U.double() @ W_U.double().T
    p = logp.double().exp()
    c = c.double() * 4
    m2, m3, p_max = moments(P, p, order=order)
    assert (m3 is None) == (order == 2)
    m1 = p @ P.T
    m0 = p.sum(-1, keepdim=True).expand_as(m2)
    log_s, bound, todo = moment_bound(
        c, m0, m1, m2, m3, p_max.expand_as(m2), tolerance=float("inf")
    )
    want = torch.logsumexp(logp.double()[:, None, :] + c[:, :, None] * P[None], -1)
    ok = ~todo
    assert ok.float().mean() > 0.5
    err = (log_s.double() - want).abs()
    assert (err[ok] <= bound.double()[ok] * (1 + 1e-6) + 1e-7).all()
    assert float(bound[ok].max()) > 1e-3  # the test exercises a non-trivial bound


@pytest.mark.real_weights
def test_certified_on_real_weights_and_diverse_prompts(smollm2):
    # Eight prompts of unlike relations and free text, three layers of SmolLM2 (early,
    # middle, late), scored by the kernels as attribute() would: certified vs exact.
    from mechmoe.ops._lpi_scoring import _Readout, _shape

    cap = smollm2.capture(DIVERSE)
    ro = _Readout.of(smollm2, reference_compat=False)
    sigma = ro.sigma(cap.final_resid[:, 0].float())
    target = cap.logits[:, 0].argmax(-1)
    unembed = UnembedStats.of(ro.W_U)
    for li in (2, 15, 28):
        lc = cap.layers[li]
        logp = ro.base_logp(lc.resid_mid[:, 0], sigma)
        U = _shape(ro.final, smollm2.ffn_weights(li).w_down[0].detach().T)
        c = lc.expert_gate[:, 0, :1].float() * lc.acts[:, 0, 0].float() / sigma
        exact, _ = shared_direction_lpi(U, ro.W_U, c, logp, target, unembed=unembed)
        for tolerance in (1e-4, 1e-6):
            stats = KernelCounts()
            got, bound = shared_direction_lpi(
                U,
                ro.W_U,
                c,
                logp,
                target,
                precision="certified",
                tolerance=tolerance,
                stats=stats,
                unembed=unembed,
            )
            assert float(bound.max()) <= tolerance
            err = (got.double() - exact.double()).abs()
            assert (err <= bound.double() + ROUND).all(), (li, tolerance)
            assert stats.moments < stats.pairs
