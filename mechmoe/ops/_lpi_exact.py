"""The exact sums of the Gated-LPI kernels, and what every tier shares.

``log Σ_v p_v exp(c · P_kv)`` summed over the whole vocabulary: by the compiled fused
kernel (:mod:`mechmoe.ops._native`) where it runs, else by cache-sized blocks of eager
torch operations (:func:`log_shifted_sum`), max-shifted where overflow is possible and
redone with an exact shift where a sum underflows; for whole chunks of directions
(:func:`exact_chunk`, the exact mode) or for listed (prompt, direction) pairs
(:func:`exact_pairs`, the certified mode's heads and last tier). Also the per-call
record of the work (:class:`KernelCounts`) and what the kernels need of ``W_U``
(:class:`UnembedStats`). See docs/attribution.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechmoe.ops import _native

#: Elements of one working block of the exact exp loop; small enough to stay in cache.
BLOCK_ELEMS = 1 << 18
#: The same on a GPU, where each op is a kernel launch: blocks of 64 MiB keep launches few.
GPU_BLOCK_ELEMS = 1 << 24
#: Below this, a shifted sum is recomputed with an exact max-shift (underflow guard).
_TINY = 1e-30


def neuron_chunk(n_dirs: int, vocab: int, budget: int) -> int:
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


def unique_small(x: Int[Tensor, " m"], size: int) -> tuple[Tensor, Tensor]:
    """``torch.unique(x, return_inverse=True)`` for values in ``[0, size)``, without a sort.

    A mark per possible value and a running count: linear in ``len(x) + size``, where
    ``torch.unique`` sorts (measured 7% of a certified call in its pair lists).
    """
    seen = torch.zeros(size, dtype=torch.bool, device=x.device)
    seen[x] = True
    values = seen.nonzero()[:, 0]
    index = torch.cumsum(seen, 0) - 1
    return values, index[x]


def exact_pairs(
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
        used, at = unique_small(rows, P.shape[0])
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
            out[redo] = exact_pairs(P, c[redo], logp[prompt[redo]], rows[redo], budget=budget).to(
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


def exact_chunk(
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
        log_s[b_idx, k_idx] = exact_pairs(P, cc[b_idx, k_idx], logp[b_idx], k_idx, budget=budget)
    scores[:, k0:k1] = cc * pw - log_s


__all__ = [
    "BLOCK_ELEMS",
    "GPU_BLOCK_ELEMS",
    "KernelCounts",
    "UnembedStats",
    "exact_chunk",
    "exact_pairs",
    "log_shifted_sum",
    "neuron_chunk",
    "unique_small",
]
