"""Relational-recall metrics: rank, HIT@k, reciprocal rank and log-probability of the gold
object's first token.

Definitions (for one item, with next-token logits ``z`` and gold token ``g``):

- **rank** ``= 1 + #{v : z[v] > z[g]}``: 1-based; tokens tied with the gold token do not
  push it down, so a tie counts in the gold token's favour.
- **HIT@k** ``= rank <= k``. **reciprocal rank** ``= 1 / rank``; its mean is the MRR.
- **logprob** ``= log_softmax(z)[g]``, computed in float32 over the whole vocabulary.

This module imports torch and xarray; :mod:`mechmoe.probes` imports it only on first use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor

from mechmoe._types import ITEM, RELATION
from mechmoe.errors import InvalidInputError
from mechmoe.probes.probeset import ALL, ProbeItem, ProbeSet


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


def item_metrics(
    logits: Float[Tensor, "item vocab"],
    targets: Int[Tensor, " item"] | Sequence[int],
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
        Gold first-token id per item (see :func:`mechmoe.probes.first_token_ids`).
    items
        The probe items, in the order of the rows.
    k
        Cut-off of HIT@k.

    Returns
    -------
    xarray.Dataset
        Dim ``item``; variables ``rank`` (int), ``hit`` (bool, rank ≤ k),
        ``reciprocal_rank``, ``logprob`` and ``target_id``; coords ``relation``,
        ``subject``, ``object``, ``prompt`` along ``item``; ``attrs["k"] = k``.

    Examples
    --------
    >>> import torch
    >>> from mechmoe.probes import ProbeItem, item_metrics
    >>> items = [ProbeItem("r", "a", "x", "a is"), ProbeItem("r", "b", "y", "b is")]
    >>> ds = item_metrics(torch.tensor([[0.0, 2.0, 1.0], [3.0, 2.0, 1.0]]), [2, 2], items, k=1)
    >>> ds["rank"].values.tolist(), ds["hit"].values.tolist()
    ([2, 3], [False, False])
    """
    if k < 1:
        raise InvalidInputError(f"k must be at least 1, got {k}")
    items = tuple(items)
    t = targets if isinstance(targets, Tensor) else torch.tensor(list(targets), dtype=torch.long)
    if not (logits.shape[0] == t.shape[0] == len(items)):
        raise InvalidInputError(
            f"{logits.shape[0]} logit rows, {t.shape[0]} targets and {len(items)} items; "
            "they must match"
        )
    rank, logprob = rank_and_logprob(logits, t)
    return _dataset(items, rank.cpu().numpy(), logprob.cpu().numpy(), t.cpu().numpy(), k)


def _dataset(
    items: tuple[ProbeItem, ...],
    rank: np.ndarray,
    logprob: np.ndarray,
    target_id: np.ndarray,
    k: int,
) -> xr.Dataset:
    rank = rank.astype(np.int64)
    coords = {
        ITEM: np.arange(len(items)),
        "relation": (ITEM, np.array([it.relation for it in items], dtype=object)),
        "subject": (ITEM, np.array([it.subject for it in items], dtype=object)),
        "object": (ITEM, np.array([it.object for it in items], dtype=object)),
        "prompt": (ITEM, np.array([it.prompt for it in items], dtype=object)),
    }
    return xr.Dataset(
        {
            "rank": (ITEM, rank),
            "hit": (ITEM, rank <= k),
            "reciprocal_rank": (ITEM, 1.0 / rank),
            "logprob": (ITEM, logprob.astype(np.float32)),
            "target_id": (ITEM, target_id.astype(np.int64)),
        },
        coords=coords,
        attrs={"k": k},
    )


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


__all__ = ["item_metrics", "rank_and_logprob", "summarize"]
