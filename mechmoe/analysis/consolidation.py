"""When a run's attribution ranking settles: rank correlations and top-k overlap over steps.

For each checkpoint ``t`` the unit scores ``S_t`` (all units ranked together, NaN as 0) are
compared with the final checkpoint's and with the previous one's: Spearman ρ, Kendall τ-b
and the Jaccard index of the top-k sets. The consolidation step is the first step from
which ρ against the final checkpoint stays ≥ τ.

Examples
--------
>>> import numpy as np, xarray as xr
>>> s = xr.DataArray(
...     np.array([[4.0, 3, 2, 1], [1, 2, 3, 4], [1, 2, 4, 3], [1, 2, 3, 4]]),
...     dims=("step", "neuron"), coords={"step": [0, 10, 20, 30]})
>>> c = consolidation(s, k=2, tau=0.7)
>>> c["spearman_final"].round(6).values.tolist()
[-1.0, 1.0, 0.8, 1.0]
>>> int(c["consolidation_step"])
10
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import xarray as xr

from mechmoe._types import STEP
from mechmoe.analysis._common import measured_steps, require_step, unit_vector
from mechmoe.analysis.distribution import top_count
from mechmoe.core.errors import InvalidInputError

#: Variables of :func:`consolidation` that hold one value per step.
PER_STEP_VARS = (
    "spearman_final",
    "kendall_final",
    "jaccard_final",
    "spearman_prev",
    "kendall_prev",
    "jaccard_prev",
)


def top_set(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the top-``k`` units by value, ties at the cut all included.

    Every unit whose value is ≥ the k-th largest is in the set, so the set holds more
    than ``k`` units exactly when several tie at the cut; ties are never broken by
    position. NaN counts as 0.

    >>> top_set(np.array([5.0, 3, 3, 1]), 2).tolist()
    [True, True, True, False]
    """
    v = unit_vector(values)
    if not 1 <= k <= v.size:
        raise InvalidInputError(f"k={k}: the top-k set needs 1 <= k <= {v.size} (the unit count)")
    cut = np.partition(v, v.size - k)[v.size - k]
    return v >= cut


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """``|A ∩ B| / |A ∪ B|`` of two boolean masks (NaN when both are empty)."""
    union = np.count_nonzero(a | b)
    return math.nan if union == 0 else np.count_nonzero(a & b) / union


def _ranks(v: np.ndarray) -> np.ndarray | None:
    """Average ranks (ties share the mean rank), centred; None for a constant vector."""
    from scipy import stats

    if v.size < 2 or np.ptp(v) == 0:
        return None
    r = stats.rankdata(v)
    return r - r.mean()


def _spearman(ra: np.ndarray | None, rb: np.ndarray | None) -> float:
    """Spearman ρ from centred average ranks: the Pearson correlation of the ranks, which
    is what ``scipy.stats.spearmanr`` computes; each vector is ranked once per step."""
    if ra is None or rb is None:
        return math.nan
    return float(np.clip(np.dot(ra, rb) / math.sqrt(np.dot(ra, ra) * np.dot(rb, rb)), -1, 1))


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall τ-b (``scipy.stats.kendalltau``, ties corrected); NaN if either is constant."""
    from scipy import stats

    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(a, b).statistic)


def consolidation_step(rho: np.ndarray, steps: np.ndarray, tau: float) -> float:
    """First step from which every ρ against the final checkpoint is ≥ ``tau``.

    The final checkpoint itself (ρ = 1 by construction) is not evidence and is left
    out: the run has consolidated at ``steps[s]`` when ``rho[t] >= tau`` for every
    ``s <= t < T−1``. NaN when there is a single checkpoint, or when the checkpoint
    before the final one is already below ``tau`` (never consolidates within the run).
    A NaN ρ (constant scores) counts as below ``tau``.

    >>> consolidation_step(np.array([0.95, 0.5, 0.92, 0.97, 1.0]), np.array([1, 2, 3, 4, 5]), 0.9)
    3.0
    """
    rho = np.asarray(rho, dtype=np.float64)
    last = rho.size - 2
    if last < 0:
        return math.nan
    ok = np.where(np.isnan(rho), False, rho >= tau)
    if not ok[last]:
        return math.nan
    s = last
    while s > 0 and ok[s - 1]:
        s -= 1
    return float(steps[s])


def consolidation(scores: xr.DataArray, *, k: int | None = None, tau: float = 0.9) -> xr.Dataset:
    """Rank stability of ``S_t`` over the checkpoints of a run.

    Parameters
    ----------
    scores
        ``S_t`` with a ``step`` dim and unit dims (e.g. ``neuron_score``); NaN counts as 0;
        a step where every value is NaN (not measured) is skipped and reads NaN.
    k
        Size of the top-k sets for the Jaccard index; default the top-1% backbone size,
        ``max(1, ceil(0.01·N))``. See :func:`top_set` for ties.
    tau
        Threshold on Spearman ρ against the final checkpoint, in [−1, 1].

    Returns
    -------
    xarray.Dataset
        Over ``step``: ``spearman_final`` (Spearman ρ = Pearson correlation of average
        ranks, as ``scipy.stats.spearmanr``), ``kendall_final`` (``scipy.stats.kendalltau``,
        τ-b), ``jaccard_final`` (against
        the last checkpoint; 1 there unless its scores are constant) and
        ``spearman_prev``, ``kendall_prev``, ``jaccard_prev`` (against the previous
        checkpoint; NaN at the first). Correlations with a constant vector are NaN.
        Scalar ``consolidation_step`` (see :func:`consolidation_step`; NaN = never).
    """
    scores = require_step(scores, "consolidation")
    all_steps = scores[STEP] if STEP in scores.coords else None
    scores = measured_steps(scores, "consolidation")
    if not -1 <= tau <= 1:
        raise InvalidInputError(f"tau={tau}: a threshold on Spearman rho must lie in [-1, 1]")
    n_steps = scores.sizes[STEP]
    final = unit_vector(scores.isel({STEP: n_steps - 1}).values)
    k = top_count(final.size, 0.01) if k is None else int(k)
    final_top, final_ranks = top_set(final, k), _ranks(final)
    out = {name: np.full(n_steps, np.nan) for name in PER_STEP_VARS}
    prev = prev_top = prev_ranks = None
    for i in range(n_steps):
        last = i == n_steps - 1
        cur = final if last else unit_vector(scores.isel({STEP: i}).values)
        cur_top = final_top if last else top_set(cur, k)
        cur_ranks = final_ranks if last else _ranks(cur)
        out["spearman_final"][i] = _spearman(cur_ranks, final_ranks)
        out["kendall_final"][i] = _kendall(cur, final)
        out["jaccard_final"][i] = jaccard(cur_top, final_top)
        if prev is not None:
            out["spearman_prev"][i] = _spearman(cur_ranks, prev_ranks)
            out["kendall_prev"][i] = _kendall(cur, prev)
            out["jaccard_prev"][i] = jaccard(cur_top, prev_top)
        prev, prev_top, prev_ranks = cur, cur_top, cur_ranks
    step_coords = {name: c for name, c in scores.coords.items() if c.dims == (STEP,)}
    steps = np.asarray(scores[STEP].values) if STEP in scores.coords else np.arange(n_steps)
    ds = xr.Dataset(
        {name: ((STEP,), values) for name, values in out.items()},
        coords=step_coords or {STEP: steps},
    )
    if all_steps is not None and all_steps.size != n_steps:
        ds = ds.reindex({STEP: all_steps.values})  # unmeasured steps: NaN
        ds = ds.assign_coords({n: c for n, c in all_steps.coords.items() if n != STEP})
    ds["consolidation_step"] = consolidation_step(out["spearman_final"], steps, tau)
    ds["consolidation_step"].attrs["long_name"] = (
        "first step from which Spearman rho against the final checkpoint stays >= tau "
        "(final checkpoint excluded); NaN = never"
    )
    ds.attrs.update({"k": k, "tau": float(tau), "n_units": int(final.size)})
    return ds


__all__ = ["PER_STEP_VARS", "consolidation", "consolidation_step", "jaccard", "top_set"]
