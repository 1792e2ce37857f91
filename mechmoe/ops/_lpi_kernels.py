"""Torch kernels of the Gated-LPI engine (see docs/attribution.md for the maths).

Every score here has the form ``LPI = Δ[w] − log Σ_v p_v exp(Δ_v)`` where ``p`` is the
base distribution of one prompt and ``Δ = W_U u`` is the logit change a vector ``u``
(already mapped through the frozen norms) causes. Two shapes of work:

- :func:`shared_direction_lpi`: many neurons whose direction ``u_k`` is the same for
  every prompt, only a scalar ``c[b, k]`` differs (``Δ = c · P_k``). ``P_k = W_U u_k`` is
  formed once per call, in neuron chunks, and reused by every prompt.
- :func:`vector_lpi`: a few vectors per prompt (heads, experts, layers); ``Δ = W_U v``.

Both run in fp32 on the tensors' device and chunk so that temporaries stay within a
memory budget. On the CPU the exact sum over the vocabulary runs in one fused pass of a
compiled kernel (:mod:`mechmoe.ops._native`), with the eager torch loop
(:func:`log_shifted_sum`) as the fallback. :func:`shared_direction_lpi` also has a
certified mode in three tiers: a tail bound that needs no full ``P`` at all
(:func:`_tail_bound_log_sum`), then four moment products of ``P`` with a proven
remainder (:func:`_certified_log_sum`) for the directions the first tier could not
certify, then the exact sum for the pairs left.
"""

from __future__ import annotations

import functools
import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechmoe.core.progress import task
from mechmoe.ops import _native

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
    logp: Float[Tensor, "r vocab"],
    rows: Int[Tensor, " m"],
    *,
    budget: int,
    prompt: Int[Tensor, " m"] | None = None,
) -> Float[Tensor, " m"]:
    """``log Σ_v exp(logp[b, v] + c · P[k, v])`` for listed ``(b, k)`` pairs, max-shifted.

    ``logp`` has one row per pair here (the torch path), or one per prompt with ``prompt``
    naming each pair's row (the native path, which gathers nothing).
    """
    if prompt is not None and _native.usable(P, logp, c):
        pmin, pmax = torch.aminmax(P, dim=1)
        shift = torch.maximum(c * pmax[rows], c * pmin[rows])
        sums = _native.pair_sums(P, logp, prompt, rows, c, shift)
        out = (shift.double() + sums.log()).float()
        # Tiny sums may be made of clamped terms (the kernel's exp floors at e^-87, so a
        # vocabulary's worth of them stays far below _TINY): redone by the torch path.
        redo = (~torch.isfinite(out) | (sums < _TINY)).nonzero()[:, 0]
        if redo.numel():
            out[redo] = _exact_pairs(P, c[redo], logp[prompt[redo]], rows[redo], budget=budget)
        return out
    if prompt is not None:
        logp = logp[prompt]
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
#: Tokens per prompt that the certified tail bound sums exactly: each prompt's most likely
#: ones under the base distribution (their union over a few prompts, see
#: :data:`TAIL_GROUP`).
TAIL_TOP = 64
#: Prompts whose top tokens are pooled into one exactly-summed head by the tail bound.
TAIL_GROUP = 32
#: Tail tokens per group (the most likely beyond the head) whose probabilities enter the
#: tail bound's second-moment term one by one; the rest share one largest probability.
TAIL_MID = 8192


class UnembedStats:
    """What the kernels need of ``W_U`` beyond itself, computed once per call.

    ``row_norm_max = max_v ‖W_U[v]‖`` bounds ``|P_kv| ≤ ‖u_k‖ · row_norm_max`` for every
    token (Cauchy–Schwarz) without forming ``P_k``; ``gram = W_Uᵀ W_U`` (float64, computed
    on first use) gives every direction's ``‖P_k‖² = u_kᵀ G u_k``.
    """

    def __init__(self, W_U: Tensor) -> None:
        self.W_U = W_U.detach()
        self.row_norm_max = float(self.W_U.double().norm(dim=1).max())

    @classmethod
    def of(cls, W_U: Tensor) -> UnembedStats:
        return cls(W_U)

    @functools.cached_property
    def gram(self) -> Float[Tensor, "d d"]:
        W = self.W_U.float()
        return W.T @ W


class TailContext:
    """The tail bound's inputs for one layer's prompts, built once and shared by every call.

    Prompts are pooled :data:`TAIL_GROUP` at a time. Per group: the head ``H`` (union of
    each prompt's :data:`TAIL_TOP` most likely tokens, summed exactly), the next
    :data:`TAIL_MID` tail tokens ``S`` by ``p̄_v = max_b p_bv`` (the group's largest
    probability of each tail token) with ``G_S = Σ_S w_v w_vᵀ`` and
    ``M_S = Σ_S p̄_v w_v w_vᵀ``, and ``θ = max p̄`` over the tokens left. Per prompt:
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
    ) -> None:
        n, vocab = p.shape
        dev = p.device
        # p W_U: fp32 products over blocks of the vocabulary, summed in float64 (the
        # tail's first moment is a difference of such sums, so one fp32 accumulation over
        # the whole vocabulary could cost more than a 1e-6 tolerance).
        self.p_W = torch.zeros((n, W_U.shape[1]), dtype=torch.float64, device=dev)
        for v0 in range(0, vocab, 16384):
            self.p_W += (p[:, v0 : v0 + 16384] @ W_U[v0 : v0 + 16384]).double()
        self.group_of = torch.arange(n, device=dev) // group
        self.p_tail_max = torch.empty(n, dtype=torch.float64, device=dev)
        self.tau = torch.empty(n, dtype=torch.float64, device=dev)  # each prompt's tail mass
        self.heads: list[Tensor] = []
        self.head_rows: list[Tensor] = []  # W_U[H] per group
        self.mid: list[tuple[Tensor, Tensor, float]] = []
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
            # G_S and M_S from one product: W_Sᵀ [W_S, p̄_S ⊙ W_S]
            both = W_S.T @ torch.cat([W_S, p_bar[S, None] * W_S], dim=1)
            d = W_U.shape[1]
            self.mid.append((both[:, :d], both[:, d:], float(left.max())))

    def select(self, rows: Tensor) -> TailContext:
        """The same context for a subset of the prompts (one expert's call)."""
        out = object.__new__(TailContext)
        out.p_W, out.group_of = self.p_W[rows], self.group_of[rows]
        out.p_tail_max, out.tau = self.p_tail_max[rows], self.tau[rows]
        out.heads, out.head_rows, out.mid = self.heads, self.head_rows, self.mid
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
    stats: dict[str, int] | None = None,
    unembed: UnembedStats | None = None,
    tail: TailContext | None = None,
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
        ``"bounded"``) certifies ``log Σ_v p_v e^{c P_kv}`` within ``tolerance`` in three
        tiers, each only for the pairs the one before could not certify: a tail bound
        that never forms ``P`` (:func:`_tail_bound_log_sum`: the prompts' top tokens
        summed exactly, the rest from its exact first moment and a second-moment bound,
        all matrix products), then the first four moments of ``P_k`` with a Taylor
        remainder (:func:`_certified_log_sum`), then the exact sum (docs/attribution.md).
    budget
        Bytes the temporaries may take.
    stats
        If given, ``stats["pairs"]``, ``stats["moments"]`` and ``stats["fallback"]`` are
        increased by the number of (prompt, direction) pairs scored, of those the tail
        bound left to the moment tier (``stats["moment_dirs"]``: their directions, whose
        ``P`` was formed), and of those summed exactly (certified mode).
    unembed, tail
        :class:`UnembedStats` of ``W_U`` (per call) and, in certified mode, the
        :class:`TailContext` of these prompts (per layer); computed here when not given.

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
        if unembed is None:
            unembed = UnembedStats.of(W_U)
        if tail is None:
            tail = TailContext(p, W_U)
        log_s, bnd, todo = _tail_bound_log_sum(
            U, W_U, c, logp, p, unembed=unembed, tail=tail, tolerance=tolerance, budget=budget
        )
        # Second tier: the four moments of P for the directions with uncertified pairs.
        need = todo.any(0).nonzero()[:, 0]
        n_moments = int(todo.sum())
        if need.numel():
            ls_m, bnd_m, todo_m = _certified_log_sum(
                U[need], W_U, c[:, need], p, tolerance=tolerance, budget=budget
            )
            # Keep, per pair, the tier that certified it more tightly.
            b_old = torch.where(todo[:, need], math.inf, bnd[:, need])
            take = ~todo_m & (bnd_m < b_old)
            log_s[:, need] = torch.where(take, ls_m, log_s[:, need])
            bnd[:, need] = torch.where(take, bnd_m, bnd[:, need])
            todo[:, need] &= todo_m
        todo |= fragile[:, None]
        bnd[todo] = 0.0
        if stats is not None:
            stats["pairs"] = stats.get("pairs", 0) + n * k
            stats["moments"] = stats.get("moments", 0) + n_moments
            stats["moment_dirs"] = stats.get("moment_dirs", 0) + int(need.numel())
            stats["fallback"] = stats.get("fallback", 0) + int(todo.sum())
        # Exact sums for the pairs left: P only for the directions they need.
        kc = _neuron_chunk(k, vocab, budget)
        need = todo.any(0).nonzero()[:, 0]
        for j0 in range(0, need.numel(), kc):
            ks = need[j0 : j0 + kc]
            b_idx, k_pos = todo[:, ks].nonzero(as_tuple=True)
            P = U[ks] @ W_U.T
            log_s[b_idx, ks[k_pos]] = _exact_pairs(
                P, c[b_idx, ks[k_pos]], logp, k_pos, budget=budget, prompt=b_idx
            )
        pw = torch.einsum("kd,nd->nk", U, W_U[target])
        return c * pw - log_s, bnd
    if unembed is None:
        unembed = UnembedStats.of(W_U)
    fragile_idx = fragile.nonzero()[:, 0]
    kc = _neuron_chunk(k, vocab, budget)
    n_chunks = -(-k // kc)
    # A small memory budget means many chunks per layer: report them, so a long layer is
    # visibly progressing (silent unless a progress reporter is active).
    with task("neuron chunks", total=n_chunks, show=None if n_chunks > 1 else False) as bar:
        for k0 in range(0, k, kc):
            _exact_chunk(
                U,
                W_U,
                c,
                p,
                logp,
                target,
                fragile_idx,
                scores,
                k0,
                min(k, k0 + kc),
                budget,
                unembed.row_norm_max,
            )
            bar.advance()
    return scores, bounds


def _tail_bound_log_sum(
    U: Float[Tensor, "k d"],
    W_U: Float[Tensor, "vocab d"],
    c: Float[Tensor, "n k"],
    logp: Float[Tensor, "n vocab"],
    p: Float[Tensor, "n vocab"],
    *,
    unembed: UnembedStats,
    tail: TailContext,
    tolerance: float,
    budget: int,
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "n k"], Tensor]:
    """``log Σ_v p_v e^{c P_kv}`` certified without forming ``P``: GEMM work only.

    For each prompt group of ``tail`` (:class:`TailContext`), the sum over the head ``H``
    is exact (``P`` only at those columns: ``U W_U[H]ᵀ``). On the tail ``R = V ∖ H``, with
    ``x_v = c P_kv``, ``0 ≤ e^x − 1 − x ≤ e^{max(x, 0)} x²/2`` gives

        ``S_lo ≤ S ≤ S_lo + e^h c²/2 · m_2``,  ``S_lo = Σ_H p_v e^{x_v} + τ + c m_1``,

    with ``τ = Σ_R p_v``, the tail's exact first moment
    ``m_1 = u_k · (W_Uᵀ p) − Σ_H p_v P_kv``, ``h = |c| ‖u_k‖ max_v ‖W_U[v]‖ ≥ max_v x_v`` and
    ``m_2 ≥ Σ_R p_v P_kv²`` the smaller of two bounds: ``max_R p_v · Σ_R P_kv²`` and
    ``u_kᵀ M_S u_k + θ · (Σ_R P_kv² − u_kᵀ G_S u_k)``, where
    ``Σ_R P_kv² = u_kᵀ W_Uᵀ W_U u_k − Σ_H P_kv²`` (Gram matrices, no ``P``). The estimate is
    the log-midpoint of the interval and the bound half its log-width. Returns
    ``(log S, bound, todo)``; ``todo`` marks pairs whose bound exceeds ``tolerance`` or
    whose interval is unusable.
    """
    n, k = c.shape
    dev = W_U.device
    norm_sq = ((U @ unembed.gram.to(dev)) * U).sum(1).double()  # ‖P_k‖², (k,)
    reach = (c.double().abs() * U.norm(dim=1).double() * unembed.row_norm_max).clamp_max(700.0)
    log_s = torch.empty((n, k), dtype=torch.float32, device=dev)
    half = torch.zeros((n, k), dtype=torch.float64, device=dev)
    ok = torch.zeros((n, k), dtype=torch.bool, device=dev)
    m_full = tail.p_W @ U.double().T  # (n, k): u_k · (W_Uᵀ p), the whole vocabulary's m_1
    for g in torch.unique(tail.group_of).tolist():
        rows = (tail.group_of == g).nonzero()[:, 0]
        H = tail.heads[g]
        G_S, M_S, theta = tail.mid[g]
        cs = c[rows]
        P_H = U @ tail.head_rows[g].T  # (k, |H|): P at the head's columns only
        lp_H = logp[rows[:, None], H[None, :]]
        p_H = p[rows[:, None], H[None, :]]
        shift = _native_shift(P_H, cs, reach[rows])
        if _native.usable(P_H, lp_H, cs, shift):
            head = shift.double() + _native.shifted_sums(P_H, lp_H, cs, shift).log()
        else:
            head = (shift + log_shifted_sum(P_H, cs, p_H, shift, budget=budget)).double()
        tau = tail.tau[rows, None]
        m1 = m_full[rows] - p_H.double() @ P_H.double().T
        # Σ_R P² from the Gram form minus the head's part; the relative slack covers the
        # fp32 rounding of the Gram products.
        slack = 1e-5 * norm_sq
        tail_sq = (norm_sq - P_H.square().sum(1).double()).clamp_min(0.0) + slack
        in_s = ((U @ G_S) * U).sum(1).double()
        m2_s = ((U @ M_S) * U).sum(1).double() * (1 + 1e-5)
        m2 = torch.minimum(
            tail.p_tail_max[rows, None] * tail_sq,
            (m2_s + theta * ((tail_sq - in_s).clamp_min(0.0) + slack))[None],
        )
        c64 = cs.double()
        s_lo = head.exp() + tau + c64 * m1
        width = torch.exp(reach[rows]) * c64.square() / 2 * m2
        hw = 0.5 * torch.log1p(width / s_lo)
        est = torch.log(s_lo) + hw
        half[rows] = hw
        log_s[rows] = est.float()
        ok[rows] = (s_lo > 0) & torch.isfinite(hw) & torch.isfinite(est) & (hw <= tolerance)
    return log_s, half.float().nan_to_num(0.0), ~ok


def _native_shift(P: Tensor, c: Tensor, reach: Tensor) -> Tensor:
    """The shift of the fused kernel's sum for ``(prompt, direction)`` pairs.

    None is needed where ``reach`` (a bound on ``|c · P_v|``, here
    ``|c| ‖u‖ max_v ‖W_U[v]‖``) is at most 60: no fp32 overflow is possible and
    ``log S ≥ min c·P ≥ −60`` stays far from underflow. Elsewhere: the exact row max.
    """
    shift = torch.zeros_like(c)
    big = (reach > 60.0).any(0).nonzero()[:, 0]
    if big.numel():
        lo, hi = torch.aminmax(P[big], dim=1)
        shift[:, big] = torch.maximum(c[:, big] * hi, c[:, big] * lo)
    return shift


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
    row_norm_max: float,
) -> None:
    """Exact LPI of directions ``k0:k1`` for every prompt, written into ``scores``."""
    P = U[k0:k1] @ W_U.T  # (kc, vocab): formed once, shared by all prompts
    cc = c[:, k0:k1]
    pw = P[:, target].T  # (n, kc)
    if _native.usable(P, logp, cc):
        # One fused pass in log space: no p underflows there, so no prompt is fragile.
        hi = _native_shift(P, cc, cc.abs() * U[k0:k1].norm(dim=1) * row_norm_max)
        log_s = hi + _native.shifted_sums(P, logp, cc, hi).log().float()
        fragile_idx = fragile_idx[:0]
    else:
        pmin, pmax = torch.aminmax(P, dim=1)
        hi = torch.maximum(cc * pmax, cc * pmin)
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

    With ``x_v = c · P_kv`` and ``m_j = Σ_v p_v P_kv^j`` (``j = 0..4``: one fp32 matrix
    product of ``p`` with the four powers of each vocabulary block of ``P``, so no exp per
    vocabulary entry and no full ``P`` held), Taylor's theorem with Lagrange remainder
    gives ``e^x = 1 + x + x²/2 + x³/6 + e^ξ x⁴/24`` with ``ξ`` between 0 and ``x``, hence,
    with ``h = |c| max_v |P_kv| ≥ max(0, max_v x_v)``,

        ``Ŝ ≤ S ≤ Ŝ + e^h c⁴ m_4 / 24``,  ``Ŝ = m_0 + c m_1 + c² m_2/2 + c³ m_3/6``.

    The estimate is the log-midpoint of that interval and the bound half its
    log-width. Returns ``(log S estimate, bound, todo)`` where ``todo`` marks pairs whose
    bound exceeds ``tolerance`` (or whose interval is unusable); those need the exact sum.
    """
    n, k = c.shape
    vocab = W_U.shape[0]
    dev = W_U.device
    vb = min(vocab, _MOMENT_BLOCK)
    # Per direction chunk: (kc × vb) fp32 block and its three powers, plus (n × 4kc) fp32
    # and (5 × n × kc) float64 accumulators, within a quarter of the budget.
    kc = max(1, min(k, budget // (4 * (16 * vb + 40 * max(1, n)))))
    m = torch.zeros((5, n, k), dtype=torch.float64, device=dev)
    m[0] = p.sum(-1, keepdim=True, dtype=torch.float64)
    sq_max = torch.zeros(k, dtype=U.dtype, device=dev)  # max_v P_kv²
    for k0 in range(0, k, kc):
        k1 = min(k, k0 + kc)
        Uc = U[k0:k1]
        kn = k1 - k0
        # The four powers of each P block side by side: one GEMM with p per block,
        # accumulated in fp32 over the blocks (positive m_2, m_4; tiny m_1, m_3).
        acc = torch.zeros((n, 4 * kn), dtype=U.dtype, device=dev)
        powers = torch.empty((4, kn, vb), dtype=U.dtype, device=dev)
        for v0 in range(0, vocab, vb):
            v1 = min(vocab, v0 + vb)
            pw = powers if v1 - v0 == vb else powers[:, :, : v1 - v0]
            torch.matmul(Uc, W_U[v0:v1].T, out=pw[0])  # one block of P, never the whole
            torch.mul(pw[0], pw[0], out=pw[1])
            torch.mul(pw[1], pw[0], out=pw[2])
            torch.mul(pw[1], pw[1], out=pw[3])
            torch.maximum(sq_max[k0:k1], pw[1].amax(dim=1), out=sq_max[k0:k1])
            acc.addmm_(p[:, v0:v1], pw.reshape(4 * kn, v1 - v0).T)
        m[1:, :, k0:k1] = acc.view(n, 4, kn).permute(1, 0, 2).double()
    c64 = c.double()
    x_hi = c64.abs() * sq_max.double().sqrt()  # ≥ max_v c·P_kv
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


__all__ = [
    "TailContext",
    "UnembedStats",
    "log_shifted_sum",
    "shared_direction_lpi",
    "vector_lpi",
]
