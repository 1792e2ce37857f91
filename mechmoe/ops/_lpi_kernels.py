"""Torch kernels of the Gated-LPI engine (see docs/attribution.md for the maths).

Every score here has the form ``LPI = Δ[w] − log Σ_v p_v exp(Δ_v)`` where ``p`` is the
base distribution of one prompt and ``Δ = W_U u`` is the logit change a vector ``u``
(already mapped through the frozen norms) causes. Two shapes of work:

- :func:`shared_direction_lpi`: many neurons whose direction ``u_k`` is the same for
  every prompt, only a scalar ``c[b, k]`` differs (``Δ = c · P_k``). ``P_k = W_U u_k`` is
  formed once per call, in neuron chunks, and reused by every prompt.
- :func:`vector_lpi`: a few vectors per prompt (heads, experts, layers); ``Δ = W_U v``.

Both run in fp32 on the tensors' device and chunk so that temporaries stay within a
memory budget. The exact sums over the vocabulary live in :mod:`mechmoe.ops._lpi_exact`
(on the CPU one fused pass of a compiled kernel, :mod:`mechmoe.ops._native`, with an
eager torch loop as the fallback). :func:`shared_direction_lpi` also has a certified
mode in three tiers (:mod:`mechmoe.ops._lpi_bounds` holds the first two): a tail bound
that needs no full ``P`` at all, then moment products of ``P`` with a proven remainder
for the directions the first tier could not certify, then the exact sum for the pairs
left (:func:`_later_tiers`, from the same ``P``). :func:`shared_direction_blocks` runs
them for many blocks of directions at once (every expert of a layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechmoe.core.progress import task
from mechmoe.ops._lpi_bounds import (
    TailContext,
    moment_bound,
    moment_order,
    moments,
    tail_bound_pairs,
)
from mechmoe.ops._lpi_exact import (
    KernelCounts,
    UnembedStats,
    exact_chunk,
    exact_pairs,
    log_shifted_sum,
    neuron_chunk,
    unique_small,
)

#: Precision modes of :func:`shared_direction_lpi`; ``"bounded"`` is the old name of ``"certified"``.
PRECISIONS = ("exact", "certified", "bounded")


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
        that never forms ``P`` (:func:`tail_bound_log_sum`: the prompts' top tokens
        summed exactly, the rest from its exact first moment and a second-moment bound,
        all matrix products), then the first four moments of ``P_k`` with a Taylor
        remainder (:func:`moment_bound`), then the exact sum (docs/attribution.md).
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
    kc = neuron_chunk(k, vocab, budget)
    n_chunks = -(-k // kc)
    # A small memory budget means many chunks per layer: report them, so a long layer is
    # visibly progressing (silent unless a progress reporter is active).
    with task("neuron chunks", total=n_chunks, show=None if n_chunks > 1 else False) as bar:
        for k0 in range(0, k, kc):
            exact_chunk(
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
    (:func:`tail_bound_pairs`), then the moments and exact sums of the pairs left,
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
        log_s, bnd, todo = tail_bound_pairs(
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

    The directions concerned are taken up to :func:`neuron_chunk` at a time, whichever
    block (expert) they belong to, so ``P`` is formed in products of many rows; each
    chunk's ``P`` serves the moment tier (:func:`moments`, over the prompts that have
    a pair in the chunk) and then the exact sums of the pairs left (and of every pair
    of a prompt whose probabilities underflow fp32). ``p_W`` is ``p W_U`` (float64), so
    the first moment is exact.
    """
    vocab = W_U.shape[0]
    frag = fragile[prompt]
    n_moments = int(todo.sum())
    D = U.shape[0]
    moment_dirs = int(unique_small(rows[todo], D)[0].numel())
    need = unique_small(rows[todo | frag], D)[0]
    kc = neuron_chunk(max(1, need.numel()), vocab, budget)
    order = torch.argsort(rows, stable=True)
    sorted_rows = rows[order]
    m0 = p.sum(-1, dtype=torch.float64)
    highest = moment_order(tolerance)
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
            users, at = unique_small(prompt[cand], p.shape[0])
            m2, m3, p_max = moments(P, p[users], order=highest)
            m1 = (p_W[users] @ U[ks].to(p_W.dtype).T)[at, pos]
            ls_m, bnd_m, todo_m = moment_bound(
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
            log_s[idx] = exact_pairs(P, c[idx], logp, pos[ex], budget=budget, prompt=prompt[idx])
    todo |= frag
    bnd[todo] = 0.0
    if stats is not None:
        stats.pairs += int(c.numel())
        stats.moments += n_moments
        stats.moment_dirs += moment_dirs
        stats.fallback += int(todo.sum())
        stats.p_rows += int(need.numel())
        stats.exps += int(todo.sum()) * vocab


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
    "PRECISIONS",
    "KernelCounts",
    "TailContext",
    "UnembedStats",
    "log_shifted_sum",
    "shared_direction_blocks",
    "shared_direction_lpi",
    "vector_lpi",
]
