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
(:func:`_tail_bound_pairs`), then moment products of ``P`` with a proven remainder
(:func:`_moments`, :func:`_moment_bound`) for the directions the first tier could not
certify, then the exact sum for the pairs left (:func:`_later_tiers`, from the same
``P``). :func:`shared_direction_blocks` runs them for many blocks of directions at once
(every expert of a layer).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

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


def _unique_small(x: Int[Tensor, " m"], size: int) -> tuple[Tensor, Tensor]:
    """``torch.unique(x, return_inverse=True)`` for values in ``[0, size)``, without a sort.

    A mark per possible value and a running count: linear in ``len(x) + size``, where
    ``torch.unique`` sorts (measured 7% of a certified call in its pair lists).
    """
    seen = torch.zeros(size, dtype=torch.bool, device=x.device)
    seen[x] = True
    values = seen.nonzero()[:, 0]
    index = torch.cumsum(seen, 0) - 1
    return values, index[x]


def _exact_pairs(
    P: Float[Tensor, "k vocab"],
    c: Float[Tensor, " m"],
    logp: Float[Tensor, "r vocab"],
    rows: Int[Tensor, " m"],
    *,
    budget: int,
    prompt: Int[Tensor, " m"] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, " m"]:
    """``log Σ_v exp(logp[b, v] + c · P[k, v])`` for listed ``(b, k)`` pairs, max-shifted.

    ``logp`` has one row per pair here (the torch path), or one per prompt with ``prompt``
    naming each pair's row (the native path, which gathers nothing). ``dtype`` is the
    result's: float64 keeps the native kernel's shift and log unrounded.
    """
    if prompt is not None and _native.usable(P, logp, c):
        # Row extremes only of the rows the pairs use (a few of a large P, often).
        used, at = _unique_small(rows, P.shape[0])
        if used.numel() * 2 < P.shape[0]:
            pmin, pmax = torch.aminmax(P[used], dim=1)
        else:
            pmin, pmax = torch.aminmax(P, dim=1)
            at = rows
        shift = torch.maximum(c * pmax[at], c * pmin[at])
        sums = _native.pair_sums(P, logp, prompt, rows, c, shift)
        out = (shift.double() + sums.log()).to(dtype)
        # Tiny sums may be made of clamped terms (the kernel's exp floors at e^-87, so a
        # vocabulary's worth of them stays far below _TINY): redone by the torch path.
        redo = (~torch.isfinite(out) | (sums < _TINY)).nonzero()[:, 0]
        if redo.numel():
            out[redo] = _exact_pairs(P, c[redo], logp[prompt[redo]], rows[redo], budget=budget).to(
                dtype
            )
        return out
    if prompt is not None:
        logp = logp[prompt]
    m, vocab = logp.shape
    step = max(1, budget // (64 * vocab))  # ~3 fp32 (pairs × vocab) temporaries
    out = torch.empty(m, dtype=dtype, device=P.device)
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


@dataclass
class KernelCounts:
    """What one call's kernels did, counted: the engine's own record of its work.

    Pairs are (prompt, direction) pairs. ``pairs`` were scored; in certified mode the
    tail bound left ``moments`` of them to the moment tier, which formed ``P`` for
    ``moment_dirs`` directions, and ``fallback`` were summed exactly. ``p_rows`` counts
    rows of ``P`` formed (each ``2·d·vocab`` FLOPs) and ``exps`` the exponentials
    evaluated (one per pair and vocabulary entry summed exactly, head entries included).
    Results carry the first four as ``n_pairs``, ``n_moments``, ``n_moment_dirs`` and
    ``n_fallback`` (:meth:`attrs`).
    """

    pairs: int = 0
    moments: int = 0
    moment_dirs: int = 0
    fallback: int = 0
    p_rows: int = 0
    exps: int = 0

    def attrs(self) -> dict[str, int]:
        """The counts as a result's attributes (names kept from the first release)."""
        return {
            "n_pairs": self.pairs,
            "n_moments": self.moments,
            "n_moment_dirs": self.moment_dirs,
            "n_fallback": self.fallback,
        }


class UnembedStats:
    """What the kernels need of ``W_U`` beyond itself, computed once per call.

    ``row_norm_max = max_v ‖W_U[v]‖`` bounds ``|P_kv| ≤ ‖u_k‖ · row_norm_max`` for every
    token (Cauchy–Schwarz) without forming ``P_k``; ``gram = W_Uᵀ W_U`` (float64, computed
    on first use) gives every direction's ``‖P_k‖² = u_kᵀ G u_k``.
    """

    def __init__(self, W_U: Tensor, *, budget: int = 4 * 2**30) -> None:
        self.W_U = W_U.detach()
        # fp32 norms, raised by far more than their rounding (≤ d·2⁻²⁴ relative): a bound.
        self.row_norm_max = float(self.W_U.float().norm(dim=1).max()) * (1 + 1e-4)
        self.budget = budget
        self._w64: Tensor | None = None  # W_U in float64, made by weighted_sum if it fits

    @classmethod
    def of(cls, W_U: Tensor, *, budget: int = 4 * 2**30) -> UnembedStats:
        return cls(W_U, budget=budget)

    def weighted_sum(self, p: Float[Tensor, "n vocab"]) -> Float[Tensor, "n d"]:
        """``p W_U`` in float64 throughout.

        Every direction's first moment ``u · (W_Uᵀ p)`` is read from it, with cancellation
        over ``d``; an fp32 accumulation over thousands of tokens was measured 4e-5 off
        (SmolLM2), far above a 1e-6 tolerance. A float64 copy of ``W_U`` is kept for the
        call when it takes at most a quarter of the memory budget, else ``W_U`` is
        converted 4,096 rows at a time.
        """
        W = self.W_U.float()
        vocab, d = W.shape
        if self._w64 is None and 8 * vocab * d <= self.budget // 4:
            # Kept for the call when it fits a quarter of the budget: with few prompts
            # the conversion, not the product, is the cost (30 layers convert W_U 30 times).
            self._w64 = W.double()
        if self._w64 is not None:
            return p.double() @ self._w64
        out = torch.zeros((p.shape[0], d), dtype=torch.float64, device=p.device)
        step = max(1, min(vocab, 4096, self.budget // (32 * d)))
        for v0 in range(0, vocab, step):
            out += p[:, v0 : v0 + step].double() @ W[v0 : v0 + step].double()
        return out

    @functools.cached_property
    def gram(self) -> Float[Tensor, "d d"]:
        W = self.W_U.float()
        return W.T @ W


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
    stats: KernelCounts | None = None,
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
        remainder (:func:`_moment_bound`), then the exact sum (docs/attribution.md).
    budget
        Bytes the temporaries may take.
    stats
        If given, the :class:`KernelCounts` this call's work is added to.
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
    if precision != "exact":  # one block: the prompts of `logp`, in order
        return shared_direction_blocks(
            [(U, c, torch.arange(n, device=dev))],
            W_U,
            logp,
            target,
            tolerance=tolerance,
            budget=budget,
            stats=stats,
            unembed=unembed,
            tail=tail,
        )[0]
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
    if unembed is None:
        unembed = UnembedStats.of(W_U, budget=budget)
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
    if stats is not None:  # the exact path: every row of P, one exp per pair and token
        stats.p_rows += k
        stats.exps += n * k * vocab
    return scores, bounds


def shared_direction_blocks(
    blocks: Sequence[tuple[Tensor, Tensor, Tensor]],
    W_U: Float[Tensor, "vocab d"],
    logp: Float[Tensor, "n vocab"],
    target: Int[Tensor, " n"],
    *,
    tolerance: float = 1e-4,
    budget: int = 4 * 2**30,
    stats: KernelCounts | None = None,
    unembed: UnembedStats | None = None,
    tail: TailContext | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Certified :func:`shared_direction_lpi` for several blocks of directions at once.

    Each block is ``(U_j, c_j, prompts_j)``: ``k_j`` directions, their coefficients
    ``(n_j, k_j)`` and which of the ``n`` prompts of ``logp`` its rows are (one expert of
    a layer and the prompts that chose it). Every tier runs once over every (prompt,
    direction) pair of all blocks, so a layer with many experts pays a few large
    products instead of many small ones per expert: the tail bound
    (:func:`_tail_bound_pairs`), then the moments and exact sums of the pairs left,
    whose ``P`` is formed for chunks of directions taken across blocks
    (:func:`_later_tiers`). Returns ``(scores, bounds)`` per block, as
    :func:`shared_direction_lpi` does.
    """
    dev = W_U.device
    W_U = W_U.float()
    logp = logp.float()
    p = logp.exp()
    if unembed is None:
        unembed = UnembedStats.of(W_U, budget=budget)
    if tail is None:
        tail = TailContext(p, W_U, unembed=unembed)
    fragile = logp.min(dim=-1).values < -80.0
    out: list[tuple[Tensor, Tensor]] = []
    # Blocks are taken together while their directions' head products stay within a
    # quarter of the budget (all of a layer's experts, for models of OLMoE's size).
    head_cols = max((h.numel() for h in tail.heads), default=1)
    max_dirs = max(1, budget // (16 * (W_U.shape[1] + head_cols)))
    j = 0
    while j < len(blocks):
        chunk = [blocks[j]]
        total = blocks[j][0].shape[0]
        while (
            j + len(chunk) < len(blocks) and total + blocks[j + len(chunk)][0].shape[0] <= max_dirs
        ):
            total += blocks[j + len(chunk)][0].shape[0]
            chunk.append(blocks[j + len(chunk)])
        j += len(chunk)
        U_all = torch.cat([u.float() for u, _, _ in chunk])
        offsets = [0]
        for u, _, _ in chunk:
            offsets.append(offsets[-1] + u.shape[0])
        rows, prompt, coef = [], [], []
        for (_u, cj, pj), o in zip(chunk, offsets, strict=False):
            nj, kj = cj.shape
            rows.append((o + torch.arange(kj, device=dev)).repeat(nj))
            prompt.append(pj.to(dev).repeat_interleave(kj))
            coef.append(cj.float().reshape(-1))
        c_all, rows_all, prompt_all = torch.cat(coef), torch.cat(rows), torch.cat(prompt)
        log_s, bnd, todo = _tail_bound_pairs(
            U_all,
            W_U,
            c_all,
            rows_all,
            prompt_all,
            logp,
            p,
            unembed=unembed,
            tail=tail,
            tolerance=tolerance,
            budget=budget,
            stats=stats,
        )
        _later_tiers(
            U_all,
            W_U,
            c_all,
            rows_all,
            prompt_all,
            logp,
            p,
            tail.p_W,
            fragile,
            log_s,
            bnd,
            todo,
            tolerance=tolerance,
            budget=budget,
            stats=stats,
        )
        at = 0
        for u, cj, pj in chunk:
            nj, kj = cj.shape
            sl = slice(at, at + nj * kj)
            at += nj * kj
            pw = torch.einsum("kd,nd->nk", u.float(), W_U[target[pj.to(dev)]])
            out.append((cj.float() * pw - log_s[sl].view(nj, kj), bnd[sl].view(nj, kj)))
    return out


def _later_tiers(
    U: Float[Tensor, "D d"],
    W_U: Float[Tensor, "vocab d"],
    c: Float[Tensor, " m"],
    rows: Int[Tensor, " m"],
    prompt: Int[Tensor, " m"],
    logp: Float[Tensor, "n vocab"],
    p: Float[Tensor, "n vocab"],
    p_W: Float[Tensor, "n d"],
    fragile: Tensor,
    log_s: Float[Tensor, " m"],
    bnd: Float[Tensor, " m"],
    todo: Tensor,
    *,
    tolerance: float,
    budget: int,
    stats: KernelCounts | None,
) -> None:
    """Tiers two and three, in place, for the listed pairs the tail bound left (``todo``).

    The directions concerned are taken up to :func:`_neuron_chunk` at a time, whichever
    block (expert) they belong to, so ``P`` is formed in products of many rows; each
    chunk's ``P`` serves the moment tier (:func:`_moments`, over the prompts that have
    a pair in the chunk) and then the exact sums of the pairs left (and of every pair
    of a prompt whose probabilities underflow fp32). ``p_W`` is ``p W_U`` (float64), so
    the first moment is exact.
    """
    vocab = W_U.shape[0]
    frag = fragile[prompt]
    n_moments = int(todo.sum())
    D = U.shape[0]
    moment_dirs = int(_unique_small(rows[todo], D)[0].numel())
    need = _unique_small(rows[todo | frag], D)[0]
    kc = _neuron_chunk(max(1, need.numel()), vocab, budget)
    order = torch.argsort(rows, stable=True)
    sorted_rows = rows[order]
    m0 = p.sum(-1, dtype=torch.float64)
    highest = _moment_order(tolerance)
    for j0 in range(0, need.numel(), kc):
        ks = need[j0 : j0 + kc]
        lo = int(torch.searchsorted(sorted_rows, ks[:1]))
        hi = int(torch.searchsorted(sorted_rows, ks[-1:], right=True))
        cand = order[lo:hi]  # pairs whose direction lies in ks's range
        pos = torch.searchsorted(ks, rows[cand]).clamp_max(ks.numel() - 1)
        keep = ks[pos] == rows[cand]
        cand, pos = cand[keep], pos[keep]
        P = U[ks] @ W_U.T  # (chunk, vocab): for both tiers
        if todo[cand].any():
            users, at = _unique_small(prompt[cand], p.shape[0])
            m2, m3, p_max = _moments(P, p[users], order=highest)
            m1 = (p_W[users] @ U[ks].to(p_W.dtype).T)[at, pos]
            ls_m, bnd_m, todo_m = _moment_bound(
                c[cand],
                m0[prompt[cand]],
                m1,
                m2[at, pos],
                None if m3 is None else m3[at, pos],
                p_max[pos],
                tolerance=tolerance,
            )
            # Keep, per pair, the tier that certified it more tightly.
            b_old = torch.where(todo[cand], math.inf, bnd[cand])
            take = ~todo_m & (bnd_m < b_old)
            log_s[cand] = torch.where(take, ls_m, log_s[cand])
            bnd[cand] = torch.where(take, bnd_m, bnd[cand])
            todo[cand] &= todo_m
        ex = todo[cand] | frag[cand]
        if ex.any():
            idx = cand[ex]
            log_s[idx] = _exact_pairs(P, c[idx], logp, pos[ex], budget=budget, prompt=prompt[idx])
    todo |= frag
    bnd[todo] = 0.0
    if stats is not None:
        stats.pairs += int(c.numel())
        stats.moments += n_moments
        stats.moment_dirs += moment_dirs
        stats.fallback += int(todo.sum())
        stats.p_rows += int(need.numel())
        stats.exps += int(todo.sum()) * vocab


def _tail_bound_log_sum(
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
    """:func:`_tail_bound_pairs` for every ``(prompt, direction)`` pair of ``c``.

    ``logp``/``p`` hold the rows of ``tail``'s prompts; ``prompts`` says which of them
    the rows of ``c`` are (default: all, in order).
    """
    n, k = c.shape
    dev = W_U.device
    pr = torch.arange(logp.shape[0], device=dev) if prompts is None else prompts.to(dev)
    rows = torch.arange(k, device=dev).repeat(n)
    log_s, half, todo = _tail_bound_pairs(
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


def _tail_bound_pairs(
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
    ``0 ≤ e^x − 1 − x = x² g_2(x) ≤ g_2(h) x²`` for ``x ≤ h`` (:func:`_taylor_factor`;
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
        dirs, d_of = _unique_small(rows[sel], U.shape[0])  # the group's directions
        Ud = U[dirs]
        H = tail.heads[g]
        M_S, theta = tail.mid[g]
        cs = c[sel]
        P_H = Ud @ tail.head_rows[g].T  # (|dirs|, |H|): P at the head's columns only
        lp_H = logp[members[:, None], H[None, :]]
        p_H = p[members[:, None], H[None, :]]
        head = _exact_pairs(P_H, cs, lp_H, d_of, budget=budget, prompt=local, dtype=torch.float64)
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
        width = _taylor_factor(reach[sel], 2) * c64.square() * m2
        hw = 0.5 * torch.log1p(width / s_lo)
        est = torch.log(s_lo) + hw
        half[sel] = hw
        log_s[sel] = est.float()
        ok[sel] = (s_lo > 0) & torch.isfinite(hw) & torch.isfinite(est) & (hw <= tolerance)
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
    """:func:`_moment_log_sum` for every direction of ``U``, ``P`` formed in chunks."""
    n, k = c.shape
    vocab = W_U.shape[0]
    p_W = p.double() @ W_U.double()
    log_s = torch.empty((n, k), dtype=torch.float32, device=W_U.device)
    half = torch.empty_like(log_s)
    todo = torch.empty((n, k), dtype=torch.bool, device=W_U.device)
    kc = _neuron_chunk(k, vocab, budget)
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
    """:func:`_moment_bound` for every ``(prompt, direction)`` of ``c`` (``m_1`` given)."""
    order = _moment_order(tolerance)
    m2, m3, p_max = _moments(P, p, order=order)
    m0 = p.sum(-1, keepdim=True, dtype=torch.float64).expand_as(m2)
    return _moment_bound(c, m0, m1, m2, m3, p_max.expand_as(m2), tolerance=tolerance)


def _moment_order(tolerance: float) -> int:
    """Highest moment the second tier forms: ``m_2`` alone at 1e-5 and above, else ``m_3`` too.

    Each moment is one elementwise power of every block of ``P`` and a third of the moment
    product; a pair the bound leaves is summed exactly from the same ``P`` (one fused exp
    per vocabulary entry). Measured on 32 diverse prompts (SmolLM2, three layers): of the
    pairs left to this tier, the third-order remainder of ``m_2`` alone leaves 11% to the
    exact sum at 1e-4 (cheaper than two more powers) but 22% at 1e-6, where ``m_3`` cuts
    that to 5%.
    """
    return 2 if tolerance >= 1e-5 else 3


def _moments(
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


def _taylor_factor(h: Tensor, n: int) -> Tensor:
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


def _moment_bound(
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
    increasing (:func:`_taylor_factor`), gives, using ``Σ_v p_v |x_v|^n ≤ |c|^n M^{n−2} m_2``:

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
        hi = s_hat + _taylor_factor(h, 4) * c64.pow(4) * M.square() * m2
    else:
        third = h * c64.square() * m2  # |c|³ M m_2
        lo = s_hat - third / 6
        hi = s_hat + _taylor_factor(h, 3) * third
    half = 0.5 * (torch.log(hi) - torch.log(lo))
    log_s = torch.log(lo) + half
    todo = ~(torch.isfinite(half) & (lo > 0) & torch.isfinite(log_s) & (half <= tolerance))
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
    "KernelCounts",
    "TailContext",
    "UnembedStats",
    "log_shifted_sum",
    "shared_direction_blocks",
    "shared_direction_lpi",
    "vector_lpi",
]
