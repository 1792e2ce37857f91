"""Relational-recall metrics: rank, HIT@k, reciprocal rank and log-probability of the gold
object's first token.

Definitions (for one item, with next-token logits ``z`` and gold token ``g``):

- **rank** ``= 1 + #{v : z[v] > z[g]}``: 1-based; tokens tied with the gold token do not
  push it down, so a tie counts in the gold token's favour.
- **HIT@k** ``= rank <= k``. **reciprocal rank** ``= 1 / rank``; its mean is the MRR.
- **logprob** ``= log_softmax(z)[g]``, computed in float32 over the whole vocabulary.

An item with several gold objects (``ProbeItem.objects``) has one rank per object's
first token; the item counts the best of them (smallest rank; the first listed on ties),
and its logprob is that object's.

This module imports torch and xarray; :mod:`mechmoe.probes` imports it only on first use.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor

from mechmoe._types import ITEM, RELATION
from mechmoe.core.errors import InvalidInputError
from mechmoe.probes.probeset import ALL, OBJECT_SEP, ProbeItem, ProbeSet


def rank_and_logprob(
    logits: Float[Tensor, "item vocab"], targets: Int[Tensor, " item"]
) -> tuple[Int[Tensor, " item"], Float[Tensor, " item"]]:
    """Rank (1-based, ties in the gold token's favour) and log-probability of each target.

    Parameters
    ----------
    logits
        Next-token logits, one row per item.
    targets
        Gold token id per item.

    Returns
    -------
    rank, logprob
        ``rank[i] = 1 + (logits[i] > logits[i, targets[i]]).sum()`` (int64) and
        ``log_softmax(logits[i].float())[targets[i]]`` (float32).
    """
    vocab = logits.shape[-1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise InvalidInputError(
            f"target ids must lie in [0, {vocab}); the logits have {vocab} columns"
        )
    z = logits.float()
    idx = targets.long().unsqueeze(-1)
    gold = z.gather(-1, idx)
    rank = (z > gold).sum(-1).long() + 1
    logprob = torch.log_softmax(z, dim=-1).gather(-1, idx).squeeze(-1)
    return rank, logprob


def degenerate_rows(logits: Float[Tensor, "item vocab"]) -> Tensor:
    """True for rows whose logits are all equal or not all finite.

    Every token ties on such a row, so the gold token's rank is 1 whatever it is
    (ties count in its favour): a HIT@k of 1.0 that means nothing. An intervention that
    scales everything to 0, or overflows to inf/NaN, produces such rows.
    """
    z = logits.float()
    finite = torch.isfinite(z).all(-1)
    flat = z.amax(-1) == z.amin(-1)
    return ~finite | flat


def warn_degenerate(n_bad: int, n_total: int) -> None:
    """One :class:`UserWarning` when ``n_bad`` of ``n_total`` rows are degenerate."""
    if n_bad:
        warnings.warn(
            f"{n_bad} of {n_total} prompts have logits that are all equal or not finite "
            "(e.g. an intervention scaled everything to 0 or overflowed); every token ties "
            "there, so their rank is 1 and HIT@k/MRR mean nothing",
            UserWarning,
            stacklevel=3,
        )


def target_sets(
    targets: Tensor | Sequence[int] | Sequence[Sequence[int]], items: Sequence[ProbeItem]
) -> list[tuple[int, ...]]:
    """Normalise gold targets to one tuple of token ids per item (one id per object)."""
    if isinstance(targets, Tensor):
        if targets.ndim != 1:
            raise InvalidInputError(
                f"targets must be one id per item (1-D), got shape {tuple(targets.shape)}"
            )
        targets = targets.tolist()
    out: list[tuple[int, ...]] = []
    for i, t in enumerate(targets):
        ids = (t,) if isinstance(t, (int, np.integer)) else tuple(t)
        for x in ids:
            if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
                raise InvalidInputError(f"target {i} ({t!r}) must be a token id or a tuple of ids")
        if i < len(items) and len(ids) != len(items[i].objects):
            raise InvalidInputError(
                f"item {i} (subject {items[i].subject!r}) has {len(items[i].objects)} gold "
                f"object(s) but {len(ids)} target id(s); give one id per object"
            )
        out.append(tuple(int(x) for x in ids))
    return out


def best_of_sets(
    logits: Float[Tensor, "item vocab"], sets: Sequence[tuple[int, ...]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank, log-probability, token id and object index of each item's best-ranked object.

    Each object is ranked by its first token as in :func:`rank_and_logprob`; an item's
    rank is the smallest rank of its objects, and its ``logprob`` and ``target_id`` are
    those of that object (the first listed among equally ranked ones).
    """
    counts = [len(s) for s in sets]
    rows = torch.repeat_interleave(
        torch.arange(len(sets), device=logits.device),
        torch.tensor(counts, device=logits.device),
    )
    flat = torch.tensor([t for s in sets for t in s], dtype=torch.long, device=logits.device)
    rank, logprob = rank_and_logprob(logits[rows], flat)
    rank_np, lp_np, flat_np = rank.cpu().numpy(), logprob.cpu().numpy(), flat.cpu().numpy()
    n = len(sets)
    best_rank = np.zeros(n, dtype=np.int64)
    best_lp = np.zeros(n, dtype=np.float32)
    best_id = np.zeros(n, dtype=np.int64)
    best_idx = np.zeros(n, dtype=np.int64)
    start = 0
    for i, c in enumerate(counts):
        j = int(np.argmin(rank_np[start : start + c]))  # first of the equally ranked
        best_rank[i], best_lp[i] = rank_np[start + j], lp_np[start + j]
        best_id[i], best_idx[i] = flat_np[start + j], j
        start += c
    return best_rank, best_lp, best_id, best_idx


def item_metrics(
    logits: Float[Tensor, "item vocab"],
    targets: Int[Tensor, " item"] | Sequence[int] | Sequence[Sequence[int]],
    items: ProbeSet | Sequence[ProbeItem],
    *,
    k: int = 10,
) -> xr.Dataset:
    """Per-item metrics as a labeled dataset.

    Parameters
    ----------
    logits
        Next-token logits at the last prompt token, one row per item.
    targets
        Gold first-token id per item (see :func:`mechmoe.probes.first_token_ids`), or,
        for items with several gold objects, a tuple of ids per item, one per object
        in ``item.objects`` order (see :func:`mechmoe.probes.gold_token_ids`).
    items
        The probe items, in the order of the rows.
    k
        Cut-off of HIT@k.

    Returns
    -------
    xarray.Dataset
        Dim ``item``; variables ``rank`` (int), ``hit`` (bool, rank ≤ k),
        ``reciprocal_rank``, ``logprob``, ``target_id`` and ``best_object``; coords
        ``relation``, ``subject``, ``object`` (the first listed), ``objects`` (all gold
        objects joined by ``"|"``), ``n_objects`` and ``prompt`` along ``item``;
        ``attrs["k"] = k``. For an item with several objects, ``rank`` is the best
        (smallest) rank among its objects, and ``logprob``, ``target_id`` and
        ``best_object`` belong to that object.

    Warns
    -----
    UserWarning
        When some rows' logits are all equal or not finite (their ranks mean nothing).

    Examples
    --------
    >>> import torch
    >>> from mechmoe.probes import ProbeItem, item_metrics
    >>> items = [ProbeItem("r", "a", "x", "a is"), ProbeItem("r", "b", "y", "b is")]
    >>> ds = item_metrics(torch.tensor([[0.0, 2.0, 1.0], [3.0, 2.0, 1.0]]), [2, 2], items, k=1)
    >>> ds["rank"].values.tolist(), ds["hit"].values.tolist()
    ([2, 3], [False, False])

    An item with two gold objects counts its better-ranked one:

    >>> two = [ProbeItem("r", "a", "x", "a is", objects=("x", "z"))]
    >>> ds = item_metrics(torch.tensor([[0.0, 2.0, 1.0]]), [(2, 1)], two, k=1)
    >>> ds["rank"].item(), ds["best_object"].item(), ds["objects"].item()
    (1, 'z', 'x|z')
    """
    if k < 1:
        raise InvalidInputError(f"k must be at least 1, got {k}")
    items = tuple(items)
    sets = target_sets(targets, items)
    if not (logits.shape[0] == len(sets) == len(items)):
        raise InvalidInputError(
            f"{logits.shape[0]} logit rows, {len(sets)} targets and {len(items)} items; "
            "they must match"
        )
    rank, logprob, target_id, best = best_of_sets(logits, sets)
    warn_degenerate(int(degenerate_rows(logits).sum()), logits.shape[0])
    return _dataset(items, rank, logprob, target_id, k, best=best)


def _dataset(
    items: tuple[ProbeItem, ...],
    rank: np.ndarray,
    logprob: np.ndarray,
    target_id: np.ndarray,
    k: int,
    *,
    best: np.ndarray | None = None,
) -> xr.Dataset:
    rank = rank.astype(np.int64)
    if best is None:
        best = np.zeros(len(items), dtype=np.int64)
    coords = {
        ITEM: np.arange(len(items)),
        "relation": (ITEM, np.array([it.relation for it in items], dtype=object)),
        "subject": (ITEM, np.array([it.subject for it in items], dtype=object)),
        "object": (ITEM, np.array([it.object for it in items], dtype=object)),
        "objects": (ITEM, np.array([OBJECT_SEP.join(it.objects) for it in items], dtype=object)),
        "n_objects": (ITEM, np.array([len(it.objects) for it in items], dtype=np.int64)),
        "prompt": (ITEM, np.array([it.prompt for it in items], dtype=object)),
    }
    best_object = np.array(
        [it.objects[int(j)] for it, j in zip(items, best, strict=True)], dtype=object
    )
    ds = xr.Dataset(
        {
            "rank": (ITEM, rank),
            "hit": (ITEM, rank <= k),
            "reciprocal_rank": (ITEM, 1.0 / rank),
            "logprob": (ITEM, logprob.astype(np.float32)),
            "target_id": (ITEM, target_id.astype(np.int64)),
            "best_object": (ITEM, best_object),
        },
        coords=coords,
        attrs={"k": k},
    )
    ds["rank"].attrs["description"] = "best (smallest) rank among the item's gold objects"
    ds["objects"].attrs["description"] = f"every gold object of the item, joined by {OBJECT_SEP!r}"
    ds["best_object"].attrs["description"] = "the gold object whose first token ranked best"
    return ds


def summarize(ds: xr.Dataset) -> xr.Dataset:
    """Per-relation and overall HIT@k, MRR, mean log-probability and count.

    Parameters
    ----------
    ds
        Output of :func:`item_metrics` or :func:`mechmoe.probes.evaluate`.

    Returns
    -------
    xarray.Dataset
        Dim ``relation`` (relations in first-seen order, then ``"all"``); variables
        ``hit`` (HIT@k), ``mrr``, ``logprob`` and ``count``. The ``"all"`` row averages
        over items (each item weighs the same, so larger relations weigh more). Attrs of
        ``ds`` are kept.

    Examples
    --------
    >>> import torch
    >>> from mechmoe.probes import ProbeItem, item_metrics, summarize
    >>> items = [ProbeItem("r", "a", "x", "a is"), ProbeItem("s", "b", "y", "b is")]
    >>> ds = item_metrics(torch.tensor([[0.0, 2.0], [3.0, 2.0]]), [1, 1], items, k=1)
    >>> summarize(ds)["hit"].sel(relation="all").item()
    0.5
    """
    if ds.sizes.get(ITEM, 0) == 0:
        raise InvalidInputError("no items to summarize")
    relations = list(dict.fromkeys(ds["relation"].values.tolist()))
    rows = {
        name: ds.isel({ITEM: np.flatnonzero(ds["relation"].values == name)}) for name in relations
    }
    rows[ALL] = ds
    names = list(rows)

    def stat(fn: str, var: str) -> np.ndarray:
        return np.array([float(getattr(rows[n][var], fn)()) for n in names])

    out = xr.Dataset(
        {
            "hit": (RELATION, stat("mean", "hit")),
            "mrr": (RELATION, stat("mean", "reciprocal_rank")),
            "logprob": (RELATION, stat("mean", "logprob")),
            "count": (RELATION, np.array([rows[n].sizes[ITEM] for n in names], dtype=np.int64)),
        },
        coords={RELATION: np.array(names, dtype=object)},
        attrs=dict(ds.attrs),
    )
    out["hit"].attrs["long_name"] = f"HIT@{ds.attrs.get('k', '?')}"
    return out


__all__ = [
    "best_of_sets",
    "degenerate_rows",
    "item_metrics",
    "rank_and_logprob",
    "summarize",
    "target_sets",
    "warn_degenerate",
]
