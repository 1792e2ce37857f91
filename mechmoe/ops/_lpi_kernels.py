"""Torch kernels of the Gated-LPI engine (see docs/attribution.md for the maths).

Every score here has the form ``LPI = Δ[w] − log Σ_v p_v exp(Δ_v)`` where ``p`` is the
base distribution of one prompt and ``Δ = W_U u`` is the logit change a vector ``u``
(already mapped through the frozen norms) causes. Two shapes of work:

- :func:`shared_direction_lpi`: many neurons whose direction ``u_k`` is the same for
  every prompt, only a scalar ``c[b, k]`` differs (``Δ = c · P_k``). ``P_k = W_U u_k`` is
  formed once per call, in neuron chunks, and reused by every prompt.
- :func:`vector_lpi`: a few vectors per prompt (heads, experts, layers); ``Δ = W_U v``.

Both run in fp32 on the tensors' device and chunk so that temporaries stay within a
memory budget.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: Elements of one working block of the exact exp loop; small enough to stay in cache.
BLOCK_ELEMS = 1 << 18
#: Below this, a shifted sum is recomputed with an exact max-shift (underflow guard).
_TINY = 1e-30
#: Top-K sizes tried by the bounded mode before it falls back to the exact sum.
_K_START, _K_GROWTH = 32, 8


def _neuron_chunk(n_dirs: int, vocab: int, budget: int) -> int:
    # The P chunk (k × vocab fp32) takes at most a quarter of the budget.
    return max(1, min(n_dirs, 512, budget // (16 * vocab)))


def log_shifted_sum(
    P: Float[Tensor, "k vocab"],
    c: Float[Tensor, "n k"],
    p: Float[Tensor, "n vocab"],
    shift: Float[Tensor, "n k"],
    *,
    budget: int,
) -> Float[Tensor, "n k"]:
    """``log Σ_v p[b, v] · exp(c[b, k] · P[k, v] − shift[b, k])`` for every ``(b, k)``.

    ``shift`` must bound ``c · P`` from above so no term overflows. The loop walks
    blocks of ``(prompt, neuron, vocab)`` small enough for the cache: one fused
    multiply-add, an in-place exp, and a batched GEMV with ``p`` per block.
    """
    n, k = c.shape
    vocab = P.shape[1]
    elems = max(1, min(BLOCK_ELEMS, budget // 16))
    vc = max(1, min(vocab, 2048, elems // max(1, n)))
    ks = max(1, min(k, elems // max(1, n * vc)))
    acc = torch.zeros((n, k, 1), dtype=torch.float32, device=P.device)
    neg_shift = (-shift)[:, :, None]
    cc = c[:, :, None]
    for s0 in range(0, k, ks):
        s1 = min(k, s0 + ks)
        buf = torch.empty((n, s1 - s0, vc), dtype=torch.float32, device=P.device)
        for v0 in range(0, vocab, vc):
            v1 = min(vocab, v0 + vc)
            b = buf if v1 - v0 == vc else torch.empty((n, s1 - s0, v1 - v0), device=P.device)
            torch.addcmul(neg_shift[:, s0:s1], cc[:, s0:s1], P[None, s0:s1, v0:v1], out=b)
            b.exp_()
            acc[:, s0:s1].baddbmm_(b, p[:, v0:v1, None])
    return acc[..., 0].log()


def _exact_pairs(
    P: Float[Tensor, "k vocab"],
    c: Float[Tensor, " m"],
    logp: Float[Tensor, "m vocab"],
    rows: Int[Tensor, " m"],
    *,
    budget: int,
) -> Float[Tensor, " m"]:
    """``log Σ_v exp(logp[b, v] + c · P[k, v])`` for listed ``(b, k)`` pairs, max-shifted."""
    m, vocab = logp.shape
    step = max(1, budget // (64 * vocab))  # ~3 fp32 (pairs × vocab) temporaries
    out = torch.empty(m, dtype=torch.float32, device=P.device)
    for i0 in range(0, m, step):
        i1 = min(m, i0 + step)
        z = torch.addcmul(logp[i0:i1], c[i0:i1, None], P[rows[i0:i1]])
        out[i0:i1] = torch.logsumexp(z, dim=-1)
    return out


def shared_direction_lpi(
    U: Float[Tensor, "k d"],
    W_U: Float[Tensor, "vocab d"],
    c: Float[Tensor, "n k"],
    logp: Float[Tensor, "n vocab"],
    target: Int[Tensor, " n"],
    *,
    precision: str = "exact",
    tolerance: float = 1e-4,
    budget: int = 4 * 2**30,
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "n k"]]:
    """LPI of ``c[b, k] · u_k`` for every prompt ``b`` and direction ``k``.

    Parameters
    ----------
    U
        Directions ``u_k`` in the final norm's input space, already scaled by the norm
        weights (prompt-independent).
    W_U
        Unembedding.
    c
        Per-prompt coefficients (gate × activation / frozen σ's).
    logp
        Base log-probabilities, one row per prompt.
    target
        Target token per prompt.
    precision, tolerance
        ``"exact"`` sums over the whole vocabulary. ``"bounded"`` sums over the top-K
        tokens of ``p``, takes the rest exactly to first order and bounds the remainder
        with the per-direction min/max of ``P`` (see :func:`_bounded_log_sum`), growing
        K, then falling back to the exact sum, until each score's bound is at most
        ``tolerance``.

    Returns
    -------
    scores, bounds
        The LPI and, per score, the proven bound on its truncation error (0 where it
        was summed exactly).
    """
    n, k = c.shape
    vocab = W_U.shape[0]
    dev = W_U.device
    U = U.float()
    W_U = W_U.float()
    c = c.float()
    logp = logp.float()
    p = logp.exp()
    scores = torch.empty((n, k), dtype=torch.float32, device=dev)
    bounds = torch.zeros((n, k), dtype=torch.float32, device=dev)
    # Tokens whose probability underflows fp32 would be dropped by the p-weighted sum:
    # such prompts take the max-shifted path instead.
    fragile = (logp.min(dim=-1).values < -80.0).nonzero()[:, 0]
    sorted_p = order = tails = p_bar = None
    if precision == "bounded":
        sorted_p, order = p.sort(dim=-1, descending=True)
        # tails[b, j] = Σ of p beyond the top j tokens, summed from the small end.
        tails = sorted_p.double().flip(-1).cumsum(-1).flip(-1)
        p_bar = p @ W_U  # (n, d): the base distribution's mean unembedding row
    kc = _neuron_chunk(k, vocab, budget)
    for k0 in range(0, k, kc):
        k1 = min(k, k0 + kc)
        P = U[k0:k1] @ W_U.T  # (kc, vocab): formed once, shared by all prompts
        pmin, pmax = torch.aminmax(P, dim=1)
        cc = c[:, k0:k1]
        hi = torch.maximum(cc * pmax, cc * pmin)
        lo = torch.minimum(cc * pmax, cc * pmin)
        pw = P[:, target].T  # (n, kc)
        if precision == "bounded":
            assert (
                sorted_p is not None
                and order is not None
                and tails is not None
                and p_bar is not None
            )
            m1 = p_bar @ U[k0:k1].T  # Σ_v p_v P_kv for every (prompt, direction)
            log_s, bnd = _bounded_log_sum(
                P, cc, logp, hi, lo, m1, sorted_p, order, tails, tolerance=tolerance, budget=budget
            )
            bounds[:, k0:k1] = bnd
            bad = torch.zeros_like(log_s, dtype=torch.bool)
        else:
            log_s = hi + log_shifted_sum(P, cc, p, hi, budget=budget)
            # Underflow guard: tiny or non-finite shifted sums are redone with an exact max-shift.
            bad = ~torch.isfinite(log_s) | (log_s - hi < math.log(_TINY))
        if fragile.numel():
            bad[fragile] = True
            bounds[fragile, k0:k1] = 0.0
        if bad.any():
            b_idx, k_idx = bad.nonzero(as_tuple=True)
            log_s[b_idx, k_idx] = _exact_pairs(
                P, cc[b_idx, k_idx], logp[b_idx], k_idx, budget=budget
            )
        scores[:, k0:k1] = cc * pw - log_s
    return scores, bounds


def _bounded_log_sum(
    P: Float[Tensor, "k vocab"],
    c: Float[Tensor, "n k"],
    logp: Float[Tensor, "n vocab"],
    hi: Float[Tensor, "n k"],
    lo: Float[Tensor, "n k"],
    m1: Float[Tensor, "n k"],
    sorted_p: Float[Tensor, "n vocab"],
    order: Int[Tensor, "n vocab"],
    tails: Float[Tensor, "n vocab"],
    *,
    tolerance: float,
    budget: int,
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "n k"]]:
    """Top-K sum plus a certified tail interval, K grown until the bound meets ``tolerance``.

    With ``S = Σ_v p_v e^{cP_v}`` and ``T`` the top K tokens by ``p``, write the tail as
    ``Σ_{v∉T} p_v (1 + cP_v) + Σ_{v∉T} p_v R(cP_v)`` with ``R(x) = e^x − 1 − x ≥ 0``. The
    first part is exact: the tail mass ``t`` and the tail's first moment
    ``m1 − Σ_{v∈T} p_v P_v``, where ``m1 = Σ_v p_v P_v = (W_U^T p) · u_k`` costs one GEMM.
    ``R`` is convex with minimum 0, so on ``cP_v ∈ [lo, hi]`` (per-direction min/max over
    the whole vocabulary) ``0 ≤ Σ_{v∉T} p_v R(cP_v) ≤ t · max(R(lo), R(hi))``. Hence
    ``S ∈ [S0, S0 + t·R_max]``; the estimate is the log-midpoint and the bound half the
    interval's log-width, second order in ``c``. Pairs still over ``tolerance`` when K
    reaches half the vocabulary are summed exactly (bound 0).
    """
    n, k = c.shape
    vocab = P.shape[1]
    dev = P.device
    log_s = torch.empty((n, k), dtype=torch.float32, device=dev)
    bound = torch.zeros((n, k), dtype=torch.float32, device=dev)
    pending = torch.ones((n, k), dtype=torch.bool, device=dev)
    lo64, hi64 = lo.double(), hi.double()
    r_max = torch.maximum(torch.expm1(lo64) - lo64, torch.expm1(hi64) - hi64)
    K = _K_START
    while K < vocab // 2 and pending.any():
        b_idx, k_idx = pending.nonzero(as_tuple=True)
        m = b_idx.numel()
        # ~8 float64 temporaries of (pairs × K) each, within a quarter of the budget
        step = max(1, budget // (256 * K))
        for i0 in range(0, m, step):
            bi, ki = b_idx[i0 : i0 + step], k_idx[i0 : i0 + step]
            pt = P[ki[:, None], order[bi, :K]].double()  # (m, K)
            ps = sorted_p[bi, :K].double()
            cc = c[bi, ki].double()
            s_top = (ps * torch.exp(cc[:, None] * pt)).sum(-1)
            m1_tail = m1[bi, ki].double() - (ps * pt).sum(-1)
            tail = tails[bi, K]
            s0 = s_top + tail + cc * m1_tail
            half = 0.5 * torch.log1p(tail * r_max[bi, ki] / s0)
            ok = (s0 > 0) & torch.isfinite(half) & (half <= tolerance)
            mid = s0.log() + half
            okb, okk = bi[ok], ki[ok]
            log_s[okb, okk] = mid[ok].float()
            bound[okb, okk] = half[ok].float()
            pending[okb, okk] = False
        K *= _K_GROWTH
    if pending.any():
        b_idx, k_idx = pending.nonzero(as_tuple=True)
        if b_idx.numel() > n * k // 4:
            # Many left: the dense blocked sum over the whole chunk beats per-pair gathers.
            full = hi + log_shifted_sum(P, c, logp.exp(), hi, budget=budget)
            log_s[b_idx, k_idx] = full[b_idx, k_idx]
        else:
            log_s[b_idx, k_idx] = _exact_pairs(
                P, c[b_idx, k_idx], logp[b_idx], k_idx, budget=budget
            )
    return log_s, bound


def vector_lpi(
    vecs: Float[Tensor, "n m d"],
    W_U: Float[Tensor, "vocab d"],
    logp: Float[Tensor, "n vocab"],
    target: Int[Tensor, " n"],
    *,
    budget: int = 4 * 2**30,
) -> Float[Tensor, "n m"]:
    """LPI of each per-prompt vector ``vecs[b, j]`` (already through the frozen norms)."""
    n, m, _ = vecs.shape
    vocab = W_U.shape[0]
    W_U = W_U.float()
    logp = logp.float()
    out = torch.empty((n, m), dtype=torch.float32, device=W_U.device)
    step = max(1, budget // (16 * vocab * max(1, n)))
    for j0 in range(0, m, step):
        j1 = min(m, j0 + step)
        delta = vecs[:, j0:j1].float() @ W_U.T  # (n, mj, vocab)
        dw = delta.gather(2, target[:, None, None].expand(n, j1 - j0, 1))[..., 0]
        out[:, j0:j1] = dw - torch.logsumexp(delta + logp[:, None, :], dim=-1)
    return out


__all__ = ["log_shifted_sum", "shared_direction_lpi", "vector_lpi"]
