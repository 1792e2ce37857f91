"""The LPI kernels against a float64 log-softmax on random data, including the edge cases
the shifted sums guard against (large coefficients, near-zero probabilities)."""

from __future__ import annotations

import pytest
import torch

from mechmoe.ops._lpi_kernels import shared_direction_lpi, vector_lpi


def _reference(U, W_U, c, logp, target):
    P = U.double() @ W_U.double().T  # (k, vocab)
    z = logp.double()[:, None, :] + c.double()[:, :, None] * P[None]
    new = torch.log_softmax(z, dim=-1)
    old = torch.log_softmax(logp.double(), dim=-1)
    idx = target[:, None, None].expand(-1, c.shape[1], 1)
    return (new.gather(2, idx)[..., 0] - old.gather(1, target[:, None])).float()


def _data(seed, n=5, k=37, d=16, vocab=300, c_scale=1.0, peak=0.0):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(k, d, generator=g)
    W_U = torch.randn(vocab, d, generator=g) / d**0.5
    c = torch.randn(n, k, generator=g) * c_scale
    logits = torch.randn(n, vocab, generator=g) * 3
    logits[:, 0] += peak
    logp = torch.log_softmax(logits, -1)
    target = torch.randint(0, vocab, (n,), generator=g)
    return U, W_U, c, logp, target


@pytest.mark.parametrize("c_scale", [1e-3, 1.0, 40.0])
@pytest.mark.parametrize("budget", [2**20, 2**32])
def test_exact_kernel_matches_log_softmax(c_scale, budget):
    U, W_U, c, logp, target = _data(0, c_scale=c_scale)
    got, bound = shared_direction_lpi(U, W_U, c, logp, target, budget=budget)
    want = _reference(U, W_U, c, logp, target)
    assert (bound == 0).all()
    torch.testing.assert_close(got, want, atol=2e-5 * max(1.0, c_scale), rtol=1e-5)


def test_prompts_with_underflowing_probabilities_stay_exact():
    U, W_U, c, logp, target = _data(1, peak=120.0)  # p of most tokens below fp32's range
    assert logp.min() < -100
    got, _ = shared_direction_lpi(U, W_U, c * 50, logp, target)
    torch.testing.assert_close(got, _reference(U, W_U, c * 50, logp, target), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("tolerance", [1e-5, 1e-3, 1e-1])
def test_bounded_kernel_is_within_its_bound(tolerance):
    U, W_U, c, logp, target = _data(2, vocab=2000, c_scale=0.3, peak=6.0)
    got, bound = shared_direction_lpi(
        U, W_U, c, logp, target, precision="bounded", tolerance=tolerance
    )
    want = _reference(U, W_U, c, logp, target)
    assert float(bound.max()) <= tolerance
    assert ((got - want).abs() <= bound + 2e-6).all()
    if tolerance >= 1e-3:
        assert (bound > 0).any()


def test_vector_kernel_matches_log_softmax():
    U, W_U, _, logp, target = _data(3)
    vecs = torch.randn(logp.shape[0], 4, U.shape[1])
    got = vector_lpi(vecs, W_U, logp, target, budget=2**20)
    ones = torch.ones(vecs.shape[0], vecs.shape[0])
    for j in range(4):
        want = _reference(vecs[:, j], W_U, ones, logp, target)  # each row its own "direction"
        torch.testing.assert_close(got[:, j], want.diagonal(), atol=2e-5, rtol=1e-5)


def test_prompts_share_one_group_within_the_budget():
    from mechmoe.ops.attribution import MAX_GROUP, _group_size

    # 1,000 prompts at a 50k vocabulary fit one group in 4 GiB: each P is formed once
    assert _group_size(1000, 16, 50304, 4 * 2**30) == 1000
    # a small budget still scores MAX_GROUP together; a larger batch is never split
    assert _group_size(1000, 16, 50304, 2**24) == MAX_GROUP
    assert _group_size(1000, 512, 50304, 2**24) == 512
    assert _group_size(3, 16, 50304, 4 * 2**30) == 16


def test_exact_kernel_blocks_many_prompts():
    # more prompts than one block row (64) and an odd vocabulary tail
    U, W_U, c, logp, target = _data(7, n=70, k=5, vocab=2100)
    got, _ = shared_direction_lpi(U, W_U, c, logp, target, budget=2**20)
    torch.testing.assert_close(got, _reference(U, W_U, c, logp, target), atol=2e-5, rtol=1e-5)


def test_small_budget_reports_each_neuron_chunk():
    """A tiny memory budget splits a layer into many chunks; each one is reported, so a
    long layer shows progress (and the chunked result still matches the reference)."""
    from mechmoe.core.progress import Recorder, reporting
    from mechmoe.ops._lpi_exact import neuron_chunk

    U, W_U, c, logp, target = _data(3, k=37, vocab=300)
    budget = 2**14
    kc = neuron_chunk(37, 300, budget)
    n_chunks = -(-37 // kc)
    assert n_chunks > 1
    rec = Recorder()
    with reporting(rec):
        got, _ = shared_direction_lpi(U, W_U, c, logp, target, budget=budget)
    chunk_events = [e for e in rec.events if e.description == "neuron chunks"]
    assert [e.kind for e in chunk_events].count("advance") == n_chunks
    assert chunk_events[0].total == n_chunks
    torch.testing.assert_close(got, _reference(U, W_U, c, logp, target), atol=2e-5, rtol=1e-5)
