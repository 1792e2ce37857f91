"""Functional robustness: how much relational recall depends on the top-attributed heads.

:func:`head_ranking` orders the heads (by head-level LPI over a probe, or as given);
:func:`head_robustness` masks the top ones and measures recall against random heads.

The experiment of method.md ("Functional robustness"): rank attention heads by their
head-level LPI averaged over a probe's prompts, mask the top ``n`` for each ``n`` of a
grid, and measure HIT@k before and after. The relative drop ``1 − after/before`` is
compared with masking ``n`` heads drawn at random (several seeds), which separates "these
heads matter" from "any ``n`` heads matter".

Examples
--------
>>> from mechmoe.testing import tiny_model
>>> from mechmoe.probes import load_probe
>>> from mechmoe.ops.robustness import head_robustness
>>> model = tiny_model("olmoe")
>>> probe = load_probe("adj_antonym").head(4)
>>> ds = head_robustness(model, probe, ns=(1, 2), seeds=2, ranking=[(1, 0), (0, 3)])
>>> dict(ds.sizes)
{'n': 2, 'seed': 2, 'rank': 2, 'slot': 2}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mechmoe._types import HEAD, LAYER, MaskMode, Target
from mechmoe.core.checks import check_choice, check_number, entry_point
from mechmoe.core.errors import InvalidInputError, InvalidTypeError
from mechmoe.core.interventions import MaskHeads, compose
from mechmoe.core.progress import task
from mechmoe.core.provenance import provenance
from mechmoe.ops.interventions import head_means

if TYPE_CHECKING:
    import xarray as xr

    from mechmoe.model import Model
    from mechmoe.probes import ProbeSet

DEFAULT_GRID: tuple[int, ...] = (1, 2, 5, 10, 20)
Ranking = Any  # an xarray DataArray (layer, head) of scores, or (layer, head) pairs in order


def rank_heads(scores: Any) -> tuple[tuple[int, int], ...]:
    """Heads ordered by score, highest first (NaN scores last; ties by layer, then head).

    ``scores`` is a ``(layer, head)`` DataArray (e.g. ``attribute(..., level="head")
    ["score"]``) or a 2-D array.
    """
    if hasattr(scores, "dims"):
        if set(scores.dims) != {LAYER, HEAD}:
            raise InvalidInputError(f"head scores need dims ('layer', 'head'), got {scores.dims}")
        scores = scores.transpose(LAYER, HEAD)
        layers = (
            np.asarray(scores[LAYER].values)
            if LAYER in scores.coords
            else np.arange(scores.shape[0])
        )
        heads = (
            np.asarray(scores[HEAD].values) if HEAD in scores.coords else np.arange(scores.shape[1])
        )
        values = np.asarray(scores.values, dtype=float)
    else:
        values = np.asarray(scores, dtype=float)
        if values.ndim != 2:
            raise InvalidInputError(
                f"head scores must be 2-D (layer, head), got shape {values.shape}"
            )
        layers, heads = np.arange(values.shape[0]), np.arange(values.shape[1])
    flat = values.reshape(-1)
    key = np.where(np.isnan(flat), np.inf, -flat)
    order = np.argsort(key, kind="stable")
    H = values.shape[1]
    return tuple((int(layers[i // H]), int(heads[i % H])) for i in order)


@dataclass(frozen=True)
class HeadRanking:
    """Attention heads in rank order, with their scores and where the order came from.

    Attributes
    ----------
    heads
        ``(layer, head)`` pairs, the highest-ranked first.
    scores
        Each head's score, in the same order (NaN where the ranking was given as pairs).
    source
        How the ranking was made: ``"head-level LPI (target=…), mean over the probe"``
        or ``"given"``.
    """

    heads: tuple[tuple[int, int], ...]
    scores: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.heads)

    def top(self, n: int) -> tuple[tuple[int, int], ...]:
        """The first ``n`` heads (all of them if there are fewer)."""
        return self.heads[:n]


@entry_point
def head_ranking(
    model: Model,
    probe: ProbeSet,
    ranking: Ranking = None,
    *,
    target: Target = "top1",
    batch_size: int = 32,
    interventions: Any = None,
) -> HeadRanking:
    """Attention heads ranked by their head-level LPI over a probe's prompts, highest first.

    Parameters
    ----------
    model
        A :class:`mechmoe.Model`.
    probe
        The probe set whose prompts are attributed.
    ranking
        ``None`` (default): rank by ``attribute(model, probe.prompts, level="head",
        target=target)["score"]``, the mean head-level LPI over the probe (see
        :func:`rank_heads` for the order of ties and NaN). Or a ``(layer, head)`` score
        DataArray/array to rank instead, or ``(layer, head)`` pairs already in order.
    target
        The LPI target: the model's top-1 token, or each item's gold object's first token
        (:func:`mechmoe.probes.first_token_ids`).
    batch_size
        Prompts per forward pass.
    interventions
        Edits applied while attributing (the ranking then describes the edited model).

    Returns
    -------
    HeadRanking
    """
    check_choice(target, Target, name="target")
    batch_size = int(check_number(batch_size, name="batch_size", integer=True, minimum=1))
    return _ranking(model, probe, ranking, target=target, batch_size=batch_size, base=interventions)


def _ranking(
    model: Model, probe: ProbeSet, ranking: Ranking, *, target: str, batch_size: int, base: Any
) -> HeadRanking:
    if ranking is None:
        from mechmoe.ops.attribution import attribute

        targets = None
        if target == "gold":
            from mechmoe.probes import first_token_ids

            targets = first_token_ids(model.tokenizer, probe.objects, probe.prompts)
        ds = attribute(
            model,
            list(probe.prompts),
            level="head",
            target=target,  # type: ignore[arg-type]
            targets=targets,
            batch_size=batch_size,
            interventions=base if base else None,
        )
        ranking, source = ds["score"], f"head-level LPI (target={target}), mean over the probe"
    else:
        source = "given"
    if isinstance(ranking, np.ndarray) and ranking.ndim == 2:
        import xarray as xr

        ranking = xr.DataArray(ranking, dims=(LAYER, HEAD))
    if hasattr(ranking, "dims"):
        order = rank_heads(ranking)
        if LAYER in ranking.coords and HEAD in ranking.coords:
            scores = np.array([float(ranking.sel({LAYER: la, HEAD: h})) for la, h in order])
        else:
            values = np.asarray(ranking.transpose(LAYER, HEAD).values, dtype=float)
            scores = np.array([values[la, h] for la, h in order])
        return HeadRanking(order, scores, source)
    if isinstance(ranking, (str, bytes)) or not hasattr(ranking, "__iter__"):
        raise InvalidTypeError(
            "ranking= takes (layer, head) pairs or a (layer, head) score array, got "
            f"{type(ranking).__name__}"
        )
    pairs = []
    for pair in ranking:
        try:
            la, h = pair
            pairs.append((int(la), int(h)))
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"a head ranking is (layer, head) pairs or a (layer, head) score array; got {pair!r}"
            ) from None
    if len(set(pairs)) != len(pairs):
        raise InvalidInputError("the head ranking lists a head more than once")
    return HeadRanking(tuple(pairs), np.full(len(pairs), np.nan), source)


def _grid(ns: Sequence[int], total: int) -> list[int]:
    out: list[int] = []
    for n in ns:
        n = int(n)
        if n < 1:
            raise InvalidInputError(f"every n of the grid must be at least 1, got {n}")
        n = min(n, total)
        if n not in out:
            out.append(n)
    return sorted(out)


@entry_point
def head_robustness(
    model: Model,
    probe: ProbeSet,
    *,
    ns: Sequence[int] = DEFAULT_GRID,
    seeds: int | Sequence[int] = 3,
    k: int = 10,
    ranking: Ranking = None,
    target: Target = "top1",
    mode: MaskMode = "zero",
    batch_size: int = 32,
    interventions: Any = None,
    progress: bool = False,
) -> xr.Dataset:
    """Mask the top-``n`` heads by head-level LPI and measure HIT@k against random heads.

    Parameters
    ----------
    model
        A :class:`mechmoe.Model`.
    probe
        The probe set: its prompts are attributed (for the ranking) and scored.
    ns
        Grid of head counts; values above the model's head count are capped at it
        (duplicates dropped).
    seeds
        Seeds of the random control: a count (``range(seeds)``) or explicit seeds. The
        random heads for ``(n, seed)`` are drawn uniformly from all heads with
        ``numpy.random.default_rng([seed, n])``.
    k
        HIT@k cut-off.
    ranking
        ``None`` (default): ``attribute(model, prompts, level="head", target=target)
        ["score"]`` — the mean head-level LPI over the probe. Or a ``(layer, head)``
        score DataArray/array, or ``(layer, head)`` pairs already in rank order
        (see :func:`head_ranking`).
    target
        LPI target when the ranking is computed: the model's top-1 token or the gold
        object's first token.
    mode
        How heads are masked: ``"zero"`` (method.md) or ``"mean"`` (each head's mean over
        the probe's real tokens, computed once so every batch uses the same value).
    interventions
        Applied in every pass (baseline included), under the masks.

    Returns
    -------
    xarray.Dataset
        Scalars ``hit_base``/``mrr_base``; over ``n``: ``hit_top``, ``mrr_top``,
        ``drop_top`` (``1 − hit_top/hit_base``; NaN when ``hit_base`` is 0) and
        ``drop_random_mean``; over ``(n, seed)``: ``hit_random``, ``mrr_random``,
        ``drop_random``; the ranking as ``ranked_layer``/``ranked_head``/
        ``ranked_score`` over ``rank``; the random draws as
        ``random_layer``/``random_head`` over ``(n, seed, slot)`` (−1 past ``n``).
        Attrs record model, revision, probe, items, k, mode, target, ranking source,
        grid, seeds and the mechmoe version.
    """
    import xarray as xr

    from mechmoe.probes import evaluate

    check_choice(mode, MaskMode, name="mode")
    check_choice(target, Target, name="target")
    k = int(check_number(k, name="k", integer=True, minimum=1))
    batch_size = int(check_number(batch_size, name="batch_size", integer=True, minimum=1))
    if len(probe) == 0:
        raise InvalidInputError("the probe set is empty; nothing to measure")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise InvalidInputError("the random control needs at least one seed")
    L, H = model.dims.n_layers, model.dims.n_heads
    total = L * H
    grid = _grid(ns, total)
    base = compose(interventions)
    base.validate(model)

    ranked = _ranking(model, probe, ranking, target=target, batch_size=batch_size, base=base)
    order, scores, source = ranked.heads, ranked.scores, ranked.source
    MaskHeads(order).validate(model)  # ranking pairs must exist in this model
    if len(order) < grid[-1]:
        raise InvalidInputError(
            f"the ranking has {len(order)} heads but the grid asks for {grid[-1]}"
        )
    means = (
        head_means(model, list(probe.prompts), batch_size=batch_size) if mode == "mean" else None
    )

    def measure(pairs: Sequence[tuple[int, int]]) -> tuple[float, float]:
        mask = MaskHeads(pairs, mode=mode, means=means) if pairs else None
        ds = evaluate(
            model,
            probe,
            k=k,
            batch_size=batch_size,
            interventions=compose(base, mask),
            progress=False,
        )
        return float(ds["hit"].mean()), float(ds["reciprocal_rank"].mean())

    jobs = 1 + len(grid) * (1 + len(seed_list))
    with task("masking heads", total=jobs, show=progress) as bar:
        hit_base, mrr_base = measure(())
        bar.advance()
        hit_top, mrr_top = np.zeros(len(grid)), np.zeros(len(grid))
        hit_rnd = np.zeros((len(grid), len(seed_list)))
        mrr_rnd = np.zeros_like(hit_rnd)
        rnd_layer = np.full((len(grid), len(seed_list), grid[-1]), -1, dtype=np.int64)
        rnd_head = np.full_like(rnd_layer, -1)
        for i, n in enumerate(grid):
            hit_top[i], mrr_top[i] = measure(order[:n])
            bar.advance()
            for j, seed in enumerate(seed_list):
                flat = np.random.default_rng([seed, n]).choice(total, size=n, replace=False)
                pairs = [(int(f // H), int(f % H)) for f in np.sort(flat)]
                rnd_layer[i, j, :n] = [p[0] for p in pairs]
                rnd_head[i, j, :n] = [p[1] for p in pairs]
                hit_rnd[i, j], mrr_rnd[i, j] = measure(pairs)
                bar.advance()

    def drop(after: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(hit_base > 0, 1.0 - after / hit_base, np.nan)

    drop_rnd = drop(hit_rnd)
    ds = xr.Dataset(
        {
            "hit_base": ((), hit_base),
            "mrr_base": ((), mrr_base),
            "hit_top": (("n",), hit_top),
            "mrr_top": (("n",), mrr_top),
            "drop_top": (("n",), drop(hit_top)),
            "hit_random": (("n", "seed"), hit_rnd),
            "mrr_random": (("n", "seed"), mrr_rnd),
            "drop_random": (("n", "seed"), drop_rnd),
            "drop_random_mean": (("n",), drop_rnd.mean(axis=1)),
            "ranked_layer": (("rank",), np.array([p[0] for p in order], dtype=np.int64)),
            "ranked_head": (("rank",), np.array([p[1] for p in order], dtype=np.int64)),
            "ranked_score": (("rank",), scores.astype(float)),
            "random_layer": (("n", "seed", "slot"), rnd_layer),
            "random_head": (("n", "seed", "slot"), rnd_head),
        },
        coords={
            "n": np.array(grid, dtype=np.int64),
            "seed": np.array(seed_list, dtype=np.int64),
            "rank": np.arange(1, len(order) + 1, dtype=np.int64),
        },
        attrs=provenance(
            model,
            probe=probe,
            options={
                "k": k,
                "mode": mode,
                "target": target,
                "grid": grid,
                "seeds": seed_list,
                "batch_size": batch_size,
                "interventions": repr(base) if len(base) else "",
            },
            experiment="head masking robustness",
            n_items=len(probe),
            metric=f"HIT@{k}",
            drop="1 - hit/hit_base",
            ranking=source,
            n_heads_total=total,
            control="n heads drawn uniformly without replacement, numpy default_rng([seed, n])",
        ),
    )
    ds["hit_top"].attrs["long_name"] = f"HIT@{k} with the top-n heads masked"
    ds["hit_random"].attrs["long_name"] = f"HIT@{k} with n random heads masked"
    return ds


__all__ = ["DEFAULT_GRID", "HeadRanking", "head_ranking", "head_robustness", "rank_heads"]
