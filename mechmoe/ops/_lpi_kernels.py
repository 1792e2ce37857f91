"""Torch kernels of the Gated-LPI engine (see docs/attribution.md for the maths).

Every score here has the form ``LPI = Δ[w] − log Σ_v p_v exp(Δ_v)`` where ``p`` is the
base distribution of one prompt and ``Δ = W_U u`` is the logit change a vector ``u``
(already mapped through the frozen norms) causes. Two shapes of work:

- :func:`shared_direction_lpi`: many neurons whose direction ``u_k`` is the same for
  every prompt, only a scalar ``c[b, k]`` differs (``Δ = c · P_k``). ``P_k = W_U u_k`` is
  formed once per call, in neuron chunks, and reused by every prompt.
- :func:`vector_lpi`: a few vectors per prompt (heads, experts, layers); ``Δ = W_U v``.

Both run in fp32 on the tensors' device and chunk so that temporaries stay within a
memory budget. :func:`shared_direction_lpi` also has a certified mode that replaces the
exp per vocabulary entry by four moment products with a proven remainder bound
(:func:`_certified_log_sum`).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechmoe.core.progress import task

#: Elements of one working block of the exact exp loop; small enough to stay in cache.
BLOCK_ELEMS = 1 << 18
#: The same on a GPU, where each op is a kernel launch: blocks of 64 MiB keep launches few.
GPU_BLOCK_ELEMS = 1 << 24
#: Below this, a shifted sum is recomputed with an exact max-shift (underflow guard).
_TINY = 1e-30


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
    block = BLOCK_ELEMS if P.device.type == "cpu" else GPU_BLOCK_ELEMS
    elems = max(1, min(block, budget // 16))
    # Prompts are taken a few at a time so blocks keep a useful shape however many
    # prompts share P (thousands, when a large group is scored together).
    nb = max(1, min(n, 64, elems // 64))
    cap = 2048 if P.device.type == "cpu" else vocab
    vc = max(1, min(vocab, cap, elems // nb))
    ks = max(1, min(k, elems // (nb * vc)))
    acc = torch.zeros((n, k, 1), dtype=torch.float32, device=P.device)
    neg_shift = (-shift)[:, :, None]
    cc = c[:, :, None]
    for b0 in range(0, n, nb):
        b1 = min(n, b0 + nb)
        for s0 in range(0, k, ks):
            s1 = min(k, s0 + ks)
            buf = torch.empty((b1 - b0, s1 - s0, vc), dtype=torch.float32, device=P.device)
            for v0 in range(0, vocab, vc):
                v1 = min(vocab, v0 + vc)
                b = buf if v1 - v0 == vc else buf[:, :, : v1 - v0]
                torch.addcmul(
                    neg_shift[b0:b1, s0:s1], cc[b0:b1, s0:s1], P[None, s0:s1, v0:v1], out=b
                )
                b.exp_()
                acc[b0:b1, s0:s1].baddbmm_(b, p[b0:b1, v0:v1, None])
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


#: Precision modes of :func:`shared_direction_lpi`; ``"bounded"`` is the old name of ``"certified"``.
PRECISIONS = ("exact", "certified", "bounded")
#: Vocabulary columns per block of the certified mode's moment pass.
_MOMENT_BLOCK = 2048


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
    stats: dict[str, int] | None = None,
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
        ``"exact"`` sums over the whole vocabulary. ``"certified"`` (old name
        ``"bounded"``) takes ``log Σ_v p_v e^{c P_kv}`` from the first four moments of
        ``P_k`` under ``p`` (matrix products, no exp per vocabulary entry) with a proven
        bound on the remainder, and sums exactly the pairs whose bound exceeds
        ``tolerance`` (see :func:`_certified_log_sum` and docs/attribution.md).
    budget
        Bytes the temporaries may take.
    stats
        If given, ``stats["pairs"]`` and ``stats["fallback"]`` are increased by the number
        of (prompt, direction) pairs scored and of those summed exactly in certified mode.

    Returns
    -------
    scores, bounds
        The LPI and, per score, the proven bound on its truncation error (0 where it
        was summed exactly).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {PRECISIONS}")
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
    fragile = logp.min(dim=-1).values < -80.0
    if precision != "exact":
        log_s, bnd, todo = _certified_log_sum(U, W_U, c, p, tolerance=tolerance, budget=budget)
        todo |= fragile[:, None]
        bnd[todo] = 0.0
        if stats is not None:
            stats["pairs"] = stats.get("pairs", 0) + n * k
            stats["fallback"] = stats.get("fallback", 0) + int(todo.sum())
        # Exact sums for the pairs left: P only for the directions they need.
        kc = _neuron_chunk(k, vocab, budget)
        need = todo.any(0).nonzero()[:, 0]
        for j0 in range(0, need.numel(), kc):
            ks = need[j0 : j0 + kc]
            b_idx, k_pos = todo[:, ks].nonzero(as_tuple=True)
            P = U[ks] @ W_U.T
            log_s[b_idx, ks[k_pos]] = _exact_pairs(
                P, c[b_idx, ks[k_pos]], logp[b_idx], k_pos, budget=budget
            )
        pw = torch.einsum("kd,nd->nk", U, W_U[target])
        return c * pw - log_s, bnd
    fragile_idx = fragile.nonzero()[:, 0]
    kc = _neuron_chunk(k, vocab, budget)
    n_chunks = -(-k // kc)
    # A small memory budget means many chunks per layer: report them, so a long layer is
    # visibly progressing (silent unless a progress reporter is active).
    with task("neuron chunks", total=n_chunks, show=None if n_chunks > 1 else False) as bar:
        for k0 in range(0, k, kc):
            _exact_chunk(
                U, W_U, c, p, logp, target, fragile_idx, scores, k0, min(k, k0 + kc), budget
            )
            bar.advance()
    return scores, bounds


def _exact_chunk(
    U: Tensor,
    W_U: Tensor,
    c: Tensor,
    p: Tensor,
    logp: Tensor,
    target: Tensor,
    fragile_idx: Tensor,
    scores: Tensor,
    k0: int,
    k1: int,
    budget: int,
) -> None:
    """Exact LPI of directions ``k0:k1`` for every prompt, written into ``scores``."""
    P = U[k0:k1] @ W_U.T  # (kc, vocab): formed once, shared by all prompts
    pmin, pmax = torch.aminmax(P, dim=1)
    cc = c[:, k0:k1]
    hi = torch.maximum(cc * pmax, cc * pmin)
    pw = P[:, target].T  # (n, kc)
    log_s = hi + log_shifted_sum(P, cc, p, hi, budget=budget)
    # Underflow guard: tiny or non-finite shifted sums are redone with an exact max-shift.
    bad = ~torch.isfinite(log_s) | (log_s - hi < math.log(_TINY))
    if fragile_idx.numel():
        bad[fragile_idx] = True
    if bad.any():
        b_idx, k_idx = bad.nonzero(as_tuple=True)
        log_s[b_idx, k_idx] = _exact_pairs(P, cc[b_idx, k_idx], logp[b_idx], k_idx, budget=budget)
    scores[:, k0:k1] = cc * pw - log_s


def _certified_log_sum(
    U: Float[Tensor, "k d"],
    W_U: Float[Tensor, "vocab d"],
    c: Float[Tensor, "n k"],
    p: Float[Tensor, "n vocab"],
    *,
    tolerance: float,
    budget: int,
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "n k"], Tensor]:
    """``log Σ_v p_v e^{c P_kv}`` from moments, with a proven bound; which pairs need more.

    With ``x_v = c · P_kv`` and ``m_j = Σ_v p_v P_kv^j`` (``j = 0..4``, float64
    accumulation of fp32 matrix products ``p @ (P^j)^T`` over vocabulary blocks, so no
    exp per vocabulary entry and no full ``P`` held), Taylor's theorem with Lagrange
    remainder gives ``e^x = 1 + x + x²/2 + x³/6 + e^ξ x⁴/24`` with ``ξ`` between 0 and
    ``x``, hence, with ``h = max(0, max_v x_v)`` (from the per-direction min/max of
    ``P``),

        ``Ŝ ≤ S ≤ Ŝ + e^h c⁴ m_4 / 24``,  ``Ŝ = m_0 + c m_1 + c² m_2/2 + c³ m_3/6``.

    The estimate is the log-midpoint of that interval and the bound half its
    log-width. Returns ``(log S estimate, bound, todo)`` where ``todo`` marks pairs whose
    bound exceeds ``tolerance`` (or whose interval is unusable); those need the exact sum.
    """
    n, k = c.shape
    vocab = W_U.shape[0]
    dev = W_U.device
    vb = min(vocab, _MOMENT_BLOCK)
    # Per direction chunk: (kc × vb) fp32 block and its three powers, plus (n × kc) float64
    # accumulators, within a quarter of the budget.
    kc = max(1, min(k, budget // (4 * (16 * vb + 40 * max(1, n)))))
    m = torch.zeros((5, n, k), dtype=torch.float64, device=dev)
    m[0] = p.double().sum(-1, keepdim=True)
    pmin = torch.full((k,), math.inf, dtype=U.dtype, device=dev)
    pmax = torch.full((k,), -math.inf, dtype=U.dtype, device=dev)
    for k0 in range(0, k, kc):
        k1 = min(k, k0 + kc)
        Uc = U[k0:k1]
        for v0 in range(0, vocab, vb):
            v1 = min(vocab, v0 + vb)
            P = Uc @ W_U[v0:v1].T  # (kc, vb): one block of P, never the whole
            lo, hi = torch.aminmax(P, dim=1)
            torch.minimum(pmin[k0:k1], lo, out=pmin[k0:k1])
            torch.maximum(pmax[k0:k1], hi, out=pmax[k0:k1])
            pb = p[:, v0:v1]
            P2 = P * P
            m[1, :, k0:k1] += (pb @ P.T).double()
            m[2, :, k0:k1] += (pb @ P2.T).double()
            m[3, :, k0:k1] += (pb @ (P2 * P).T).double()
            m[4, :, k0:k1] += (pb @ P2.square_().T).double()
    c64 = c.double()
    x_hi = torch.maximum(c64 * pmax.double(), c64 * pmin.double()).clamp_min(0.0)
    s_hat = m[0] + c64 * (m[1] + c64 * (m[2] / 2 + c64 * m[3] / 6))
    err = torch.exp(x_hi) * c64.pow(4) * m[4] / 24
    half = 0.5 * torch.log1p(err / s_hat)
    log_s = torch.log(s_hat) + half
    todo = ~(torch.isfinite(half) & (s_hat > 0) & torch.isfinite(log_s) & (half <= tolerance))
    return log_s.float(), half.float().nan_to_num(0.0), todo


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
