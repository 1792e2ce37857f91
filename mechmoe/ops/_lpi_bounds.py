"""The certified mode's bounds: the tail bound (tier 1) and the moments of ``P`` (tier 2).

Both give, for a (prompt, direction) pair, an interval ``S_lo ≤ Σ_v p_v e^{c P_kv} ≤ S_hi``
from Taylor's theorem with a proven remainder (:func:`taylor_factor`), and return the
log-midpoint with half the log-width as the bound. The tail bound
(:func:`tail_bound_pairs`, with the per-layer :class:`TailContext`) never forms ``P``:
the prompts' likely tokens are summed exactly, the rest bounded from Gram matrices of
``W_U``. The moment tier (:func:`moments`, :func:`moment_bound`) reads ``m_2`` (and
``m_3``) from rows of ``P`` formed for the directions tier 1 left. The proofs are in
docs/attribution.md ("The certified bound").
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechmoe.ops._lpi_exact import (
    KernelCounts,
    UnembedStats,
    exact_pairs,
    neuron_chunk,
    unique_small,
)

#: Vocabulary columns per block of the certified mode's moment pass.
_MOMENT_BLOCK = 2048
#: Tokens per prompt that the certified tail bound sums exactly: each prompt's most likely
#: ones under the base distribution (their union over a few prompts, see
#: :data:`TAIL_GROUP`).
TAIL_TOP = 64
#: Prompts whose top tokens are pooled into one exactly-summed head by the tail bound.
TAIL_GROUP = 32
#: Tail tokens per group (the most likely beyond the head) whose probabilities enter the
#: tail bound's second-moment term one by one; the rest share one largest probability.
TAIL_MID = 8192


class TailContext:
    """The tail bound's inputs for one layer's prompts, built once and shared by every call.

    Prompts are pooled :data:`TAIL_GROUP` at a time. Per group: the head ``H`` (union of
    each prompt's :data:`TAIL_TOP` most likely tokens, summed exactly), the next
    :data:`TAIL_MID` tail tokens ``S`` by ``p̄_v = max_b p_bv`` (the group's largest
    probability of each tail token) with ``M_S = Σ_S p̄_v w_v w_vᵀ`` (one ``d × d``
    product), and ``θ = max p̄`` over the tokens left. Per prompt:
    ``p W_U`` (the first moment of every direction at once) and its largest tail
    probability. Everything is ``(prompt, vocab)`` or ``d × d`` work: no ``P``.
    """

    def __init__(
        self,
        p: Float[Tensor, "n vocab"],
        W_U: Float[Tensor, "vocab d"],
        *,
        group: int = TAIL_GROUP,
        top: int = TAIL_TOP,
        mid: int = TAIL_MID,
        unembed: UnembedStats | None = None,
    ) -> None:
        n, vocab = p.shape
        dev = p.device
        # p W_U in float64: every direction's first moment is read from it.
        self.p_W = (unembed if unembed is not None else UnembedStats.of(W_U)).weighted_sum(p)
        self.group_of = torch.arange(n, device=dev) // group
        self.p_tail_max = torch.empty(n, dtype=torch.float64, device=dev)
        self.tau = torch.empty(n, dtype=torch.float64, device=dev)  # each prompt's tail mass
        self.heads: list[Tensor] = []
        self.head_rows: list[Tensor] = []  # W_U[H] per group
        self.mid: list[tuple[Tensor, float]] = []  # (M_S, θ) per group
        for b0 in range(0, n, group):
            b1 = min(n, b0 + group)
            pg = p[b0:b1]
            H = torch.unique(pg.topk(min(top, vocab), dim=1).indices)
            rest = pg.clone()
            rest[:, H] = 0.0
            self.p_tail_max[b0:b1] = rest.max(dim=1).values.double()
            self.tau[b0:b1] = rest.sum(dim=1, dtype=torch.float64)
            p_bar = rest.max(dim=0).values
            pick = p_bar.clone()
            pick[H] = -1.0  # S never takes a head token
            S = pick.topk(min(mid, vocab - H.numel())).indices if vocab > H.numel() else H[:0]
            left = p_bar.clone()
            left[S] = 0.0
            W_S = W_U[S]
            self.heads.append(H)
            self.head_rows.append(W_U[H])
            self.mid.append((W_S.T @ (p_bar[S, None] * W_S), float(left.max())))


def tail_bound_log_sum(
    U: Float[Tensor, "k d"],
    W_U: Float[Tensor, "vocab d"],
    c: Float[Tensor, "r k"],
    logp: Float[Tensor, "n vocab"],
    p: Float[Tensor, "n vocab"],
    *,
    unembed: UnembedStats,
    tail: TailContext,
    tolerance: float,
    budget: int,
    prompts: Int[Tensor, " r"] | None = None,
) -> tuple[Float[Tensor, "r k"], Float[Tensor, "r k"], Tensor]:
    """:func:`tail_bound_pairs` for every ``(prompt, direction)`` pair of ``c``.

    ``logp``/``p`` hold the rows of ``tail``'s prompts; ``prompts`` says which of them
    the rows of ``c`` are (default: all, in order).
    """
    n, k = c.shape
    dev = W_U.device
    pr = torch.arange(logp.shape[0], device=dev) if prompts is None else prompts.to(dev)
    rows = torch.arange(k, device=dev).repeat(n)
    log_s, half, todo = tail_bound_pairs(
        U,
        W_U,
        c.float().reshape(-1),
        rows,
        pr.repeat_interleave(k),
        logp,
        p,
        unembed=unembed,
        tail=tail,
        tolerance=tolerance,
        budget=budget,
    )
    return log_s.view(n, k), half.view(n, k), todo.view(n, k)


def tail_bound_pairs(
    U: Float[Tensor, "D d"],
    W_U: Float[Tensor, "vocab d"],
    c: Float[Tensor, " m"],
    rows: Int[Tensor, " m"],
    prompt: Int[Tensor, " m"],
    logp: Float[Tensor, "n vocab"],
    p: Float[Tensor, "n vocab"],
    *,
    unembed: UnembedStats,
    tail: TailContext,
    tolerance: float,
    budget: int,
    stats: KernelCounts | None = None,
) -> tuple[Float[Tensor, " m"], Float[Tensor, " m"], Tensor]:
    """``log Σ_v p_v e^{c P_kv}`` certified without forming ``P``, for listed pairs.

    Pair ``i`` is direction ``U[rows[i]]`` with coefficient ``c[i]`` on prompt
    ``prompt[i]`` (a row of ``logp`` and of ``tail``). For each prompt group of ``tail``
    (:class:`TailContext`), the sum over the head ``H`` is exact (``P`` only at those
    columns: ``U W_U[H]ᵀ``). On the tail ``R = V ∖ H``, with ``x_v = c P_kv``,
    ``0 ≤ e^x − 1 − x = x² g_2(x) ≤ g_2(h) x²`` for ``x ≤ h`` (:func:`taylor_factor`;
    ``g_2(h) ≤ e^h/2``) gives

        ``S_lo ≤ S ≤ S_lo + g_2(h) c² m_2``,  ``S_lo = Σ_H p_v e^{x_v} + τ + c m_1``,

    with ``τ = Σ_R p_v``, the tail's exact first moment
    ``m_1 = u_k · (W_Uᵀ p) − Σ_H p_v P_kv``, ``h = |c| ‖u_k‖ max_v ‖W_U[v]‖ ≥ max_v x_v`` and
    ``m_2 ≥ Σ_R p_v P_kv²`` the smaller of two bounds: ``max_R p_v · Σ_R P_kv²`` and
    ``u_kᵀ M_S u_k + θ · Σ_R P_kv²`` (on ``S``, ``p_v ≤ p̄_v``; beyond it, ``p_v ≤ θ``), where
    ``Σ_R P_kv² = u_kᵀ W_Uᵀ W_U u_k − Σ_H P_kv²`` (Gram matrices, no ``P``). The estimate is
    the log-midpoint of the interval and the bound half its log-width. Every quantity
    of a direction or a (prompt, direction) is computed once, however many pairs share
    it. Returns ``(log S, bound, todo)``; ``todo`` marks pairs whose bound exceeds
    ``tolerance`` or whose interval is unusable.
    """
    m = c.shape[0]
    dev = W_U.device
    norm_sq = ((U @ unembed.gram.to(dev)) * U).sum(1).double()  # ‖P_k‖², (D,)
    u_norm = U.norm(dim=1).double()
    reach = (c.double().abs() * u_norm[rows] * unembed.row_norm_max).clamp_max(700.0)
    log_s = torch.empty(m, dtype=torch.float32, device=dev)
    half = torch.zeros(m, dtype=torch.float64, device=dev)
    ok = torch.zeros(m, dtype=torch.bool, device=dev)
    group = tail.group_of[prompt]
    n = tail.group_of.shape[0]
    local_of = torch.empty(n, dtype=torch.long, device=dev)
    for g in torch.unique(group).tolist():
        sel = (group == g).nonzero()[:, 0]
        members = (tail.group_of == g).nonzero()[:, 0]  # the group's prompts
        local_of[members] = torch.arange(members.numel(), device=dev)
        local = local_of[prompt[sel]]
        dirs, d_of = unique_small(rows[sel], U.shape[0])  # the group's directions
        Ud = U[dirs]
        H = tail.heads[g]
        M_S, theta = tail.mid[g]
        cs = c[sel]
        P_H = Ud @ tail.head_rows[g].T  # (|dirs|, |H|): P at the head's columns only
        lp_H = logp[members[:, None], H[None, :]]
        p_H = p[members[:, None], H[None, :]]
        head = exact_pairs(P_H, cs, lp_H, d_of, budget=budget, prompt=local, dtype=torch.float64)
        if stats is not None:
            stats.exps += int(sel.numel()) * int(H.numel())
        # m_1 per (prompt, direction) of the group, then read at the pairs.
        m1 = tail.p_W[members] @ Ud.double().T - p_H.double() @ P_H.double().T
        m1 = m1[local, d_of]
        # Σ_R P² from the Gram form minus the head's part; the relative slack covers the
        # fp32 rounding of the Gram products.
        slack = 1e-5 * norm_sq[dirs]
        tail_sq = (norm_sq[dirs] - P_H.square().sum(1).double()).clamp_min(0.0) + slack
        m2_mid = ((Ud @ M_S) * Ud).sum(1).double() * (1 + 1e-5) + theta * tail_sq
        pr = prompt[sel]
        m2 = torch.minimum(tail.p_tail_max[pr] * tail_sq[d_of], m2_mid[d_of])
        c64 = cs.double()
        s_lo = head.exp() + tail.tau[pr] + c64 * m1
        width = taylor_factor(reach[sel], 2) * c64.square() * m2
        hw = 0.5 * torch.log1p(width / s_lo)
        est = torch.log(s_lo) + hw
        half[sel] = hw
        log_s[sel] = est.float()
        ok[sel] = (s_lo > 0) & torch.isfinite(hw) & torch.isfinite(est) & (hw <= tolerance)
    return log_s, half.float().nan_to_num(0.0), ~ok


def certified_log_sum(
    U: Float[Tensor, "k d"],
    W_U: Float[Tensor, "vocab d"],
    c: Float[Tensor, "n k"],
    p: Float[Tensor, "n vocab"],
    *,
    tolerance: float,
    budget: int,
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "n k"], Tensor]:
    """:func:`_moment_log_sum` for every direction of ``U``, ``P`` formed in chunks."""
    n, k = c.shape
    vocab = W_U.shape[0]
    p_W = p.double() @ W_U.double()
    log_s = torch.empty((n, k), dtype=torch.float32, device=W_U.device)
    half = torch.empty_like(log_s)
    todo = torch.empty((n, k), dtype=torch.bool, device=W_U.device)
    kc = neuron_chunk(k, vocab, budget)
    for k0 in range(0, k, kc):
        k1 = min(k, k0 + kc)
        P = U[k0:k1] @ W_U.T
        m1 = p_W @ U[k0:k1].double().T
        log_s[:, k0:k1], half[:, k0:k1], todo[:, k0:k1] = _moment_log_sum(
            P, c[:, k0:k1], p, m1, tolerance=tolerance
        )
    return log_s, half, todo


def _moment_log_sum(
    P: Float[Tensor, "k vocab"],
    c: Float[Tensor, "n k"],
    p: Float[Tensor, "n vocab"],
    m1: Float[Tensor, "n k"],
    *,
    tolerance: float,
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "n k"], Tensor]:
    """:func:`moment_bound` for every ``(prompt, direction)`` of ``c`` (``m_1`` given)."""
    order = moment_order(tolerance)
    m2, m3, p_max = moments(P, p, order=order)
    m0 = p.sum(-1, keepdim=True, dtype=torch.float64).expand_as(m2)
    return moment_bound(c, m0, m1, m2, m3, p_max.expand_as(m2), tolerance=tolerance)


def moment_order(tolerance: float) -> int:
    """Highest moment the second tier forms: ``m_2`` alone at 1e-5 and above, else ``m_3`` too.

    Each moment is one elementwise power of every block of ``P`` and a third of the moment
    product; a pair the bound leaves is summed exactly from the same ``P`` (one fused exp
    per vocabulary entry). Measured on 32 diverse prompts (SmolLM2, three layers): of the
    pairs left to this tier, the third-order remainder of ``m_2`` alone leaves 11% to the
    exact sum at 1e-4 (cheaper than two more powers) but 22% at 1e-6, where ``m_3`` cuts
    that to 5%.
    """
    return 2 if tolerance >= 1e-5 else 3


def moments(
    P: Float[Tensor, "k vocab"], p: Float[Tensor, "n vocab"], *, order: int = 2
) -> tuple[Tensor, Tensor | None, Tensor]:
    """``m_j = Σ_v p_v P_kv^j`` for ``j = 2`` (and ``3`` if ``order == 3``), and ``max_v |P_kv|``.

    ``m_j`` are float64 ``(n, k)``, the row maxima ``(k,)``. Per block of vocabulary
    columns of ``P`` (sized to stay in the cache): the powers, side by side, and one
    matrix product with ``p`` accumulated in ``P``'s dtype; no exp per vocabulary entry.
    """
    n = p.shape[0]
    kn, vocab = P.shape
    dev = P.device
    j = order - 1  # powers formed: P², and P³ for order 3
    vb = min(vocab, _MOMENT_BLOCK)
    acc = torch.zeros((n, j * kn), dtype=P.dtype, device=dev)
    powers = torch.empty((j, kn, vb), dtype=P.dtype, device=dev)
    sq_max = torch.zeros(kn, dtype=P.dtype, device=dev)
    for v0 in range(0, vocab, vb):
        v1 = min(vocab, v0 + vb)
        pw = powers if v1 - v0 == vb else powers[:, :, : v1 - v0]
        blk = P[:, v0:v1]
        torch.mul(blk, blk, out=pw[0])
        if j > 1:
            torch.mul(pw[0], blk, out=pw[1])
        torch.maximum(sq_max, pw[0].amax(dim=1), out=sq_max)
        acc.addmm_(p[:, v0:v1].to(P.dtype), pw.reshape(j * kn, v1 - v0).T)
    m = acc.view(n, j, kn).permute(1, 0, 2).double()
    return m[0], (m[1] if j > 1 else None), sq_max.double().sqrt()


def taylor_factor(h: Tensor, n: int) -> Tensor:
    """``g_n(h) = (e^h − Σ_{j<n} h^j/j!) / h^n`` in float64, elementwise, for ``h ≥ 0``.

    ``g_n(x) = ∫₀¹ (1−t)^{n−1} e^{tx} dt / (n−1)!`` is positive and increasing in ``x``,
    with ``g_n(0) = 1/n!`` (docs/attribution.md). Below 1 the power series
    ``Σ_j h^j/(n+j)!`` is summed (no cancellation); above, the closed form. Raised by a
    relative 1e-12, far above the rounding of either, so it bounds ``g_n`` from above.
    """
    h = h.double().clamp(0.0, 700.0)
    small = h < 1.0
    hs = torch.where(small, torch.ones_like(h), h)
    head = torch.ones_like(hs)
    term = torch.ones_like(hs)
    for i in range(1, n):
        term = term * hs / i
        head = head + term
    closed = (torch.exp(hs) - head) / hs.pow(n)
    series = torch.zeros_like(h)
    term = torch.full_like(h, 1.0 / math.factorial(n))
    for i in range(1, 24):  # h < 1: the omitted terms are below 1e-20 of the first
        series = series + term
        term = term * h / (n + i)
    return torch.where(small, series, closed) * (1 + 1e-12)


def moment_bound(
    c: Tensor,
    m0: Tensor,
    m1: Tensor,
    m2: Tensor,
    m3: Tensor | None,
    p_max: Tensor,
    *,
    tolerance: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``log Σ_v p_v e^{c P_kv}`` from moments, with a proven bound; which pairs need more.

    Elementwise over pairs, with ``x_v = c · P_kv``, ``m_j = Σ_v p_v P_kv^j``,
    ``M = max_v |P_kv|`` (``p_max``) and ``h = |c| M ≥ |x_v|``. Taylor's theorem with the
    integral remainder, ``e^x = Σ_{j<n} x^j/j! + x^n g_n(x)`` with ``g_n`` positive and
    increasing (:func:`taylor_factor`), gives, using ``Σ_v p_v |x_v|^n ≤ |c|^n M^{n−2} m_2``:

    - with ``m_3`` (``n = 4``; ``x⁴ ≥ 0``): ``Ŝ ≤ S ≤ Ŝ + g_4(h) c⁴ M² m_2``,
      ``Ŝ = m_0 + c m_1 + c² m_2/2 + c³ m_3/6``;
    - without (``n = 3``; ``x³`` takes both signs, and ``g_3(x) ≤ 1/6`` for ``x < 0``):
      ``Ŝ − |c|³ M m_2/6 ≤ S ≤ Ŝ + g_3(h) |c|³ M m_2``, ``Ŝ = m_0 + c m_1 + c² m_2/2``.

    The estimate is the log-midpoint of the interval and the bound half its log-width.
    Returns ``(log S estimate, bound, todo)`` where ``todo`` marks pairs whose bound
    exceeds ``tolerance`` (or whose interval is unusable); those need the exact sum.
    """
    c64 = c.double()
    M = p_max.double()
    h = c64.abs() * M
    m2 = m2.double()
    s_hat = m0 + c64 * (m1.double() + c64 * m2 / 2)
    if m3 is not None:
        s_hat = s_hat + c64.pow(3) * m3.double() / 6
        lo = s_hat
        hi = s_hat + taylor_factor(h, 4) * c64.pow(4) * M.square() * m2
    else:
        third = h * c64.square() * m2  # |c|³ M m_2
        lo = s_hat - third / 6
        hi = s_hat + taylor_factor(h, 3) * third
    half = 0.5 * (torch.log(hi) - torch.log(lo))
    log_s = torch.log(lo) + half
    todo = ~(torch.isfinite(half) & (lo > 0) & torch.isfinite(log_s) & (half <= tolerance))
    return log_s.float(), half.float().nan_to_num(0.0), todo


__all__ = [
    "TAIL_GROUP",
    "TAIL_MID",
    "TAIL_TOP",
    "TailContext",
    "certified_log_sum",
    "moment_bound",
    "moment_order",
    "moments",
    "tail_bound_log_sum",
    "tail_bound_pairs",
    "taylor_factor",
]
