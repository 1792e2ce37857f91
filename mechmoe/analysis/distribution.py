"""How concentrated knowledge acquisition is: positive updates and their distribution.

``PU(n) = Σ_t max(S_t(n) − S_{t−1}(n), 0)`` over the checkpoints of a run, then the share
of the total held by the top fraction of units (the "backbone"), its curve over the
fraction, the Lorenz curve, the Gini coefficient and the normalised entropy. Units are all
entries of the score array but ``step`` (layer × expert × neuron for neuron scores),
ranked together.

Examples
--------
>>> import numpy as np, xarray as xr
>>> s = xr.DataArray(np.array([[0.0, 1.0], [2.0, 0.5], [1.0, 1.5]]), dims=("step", "neuron"))
>>> positive_updates(s).values.tolist()  # neuron 0: +2, −1; neuron 1: −0.5, +1
[2.0, 1.0]
>>> round(backbone_share(positive_updates(s), q=0.5), 4)  # top ceil(0.5·2) = 1 unit
0.6667
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import xarray as xr

from mechmoe._types import POPULATION, QUANTILE, STEP
from mechmoe.analysis._common import measured_steps, require_step, unit_vector
from mechmoe.core.errors import InvalidInputError

#: Fractions :func:`backbone_curve` reports when none are given.
DEFAULT_QS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def positive_updates(scores: xr.DataArray) -> xr.DataArray:
    """Sum over checkpoints of each unit's score increases, ``Σ_t max(S_t − S_{t−1}, 0)``.

    Parameters
    ----------
    scores
        ``S_t`` with a ``step`` dim (sorted here if it is not) and any unit dims, e.g. the
        store's ``neuron_score`` (step, layer, expert, neuron). NaN (a unit that was not
        scored) counts as 0: it contributed nothing. A step where every value is NaN
        (the measure was not run there) is left out.

    Returns
    -------
    xarray.DataArray
        ``positive_updates`` over the unit dims, ≥ 0. A single checkpoint has no update:
        all zeros. Steps are read one at a time, so a lazy (dask/zarr) array is never
        loaded whole.
    """
    scores = measured_steps(require_step(scores, "positive_updates"), "positive_updates")
    first = scores.isel({STEP: 0})
    prev = np.where(np.isnan(first.values), 0.0, first.values.astype(np.float64))
    total = np.zeros_like(prev)
    for i in range(1, scores.sizes[STEP]):
        cur = np.asarray(scores.isel({STEP: i}).values, dtype=np.float64)
        cur = np.where(np.isnan(cur), 0.0, cur)
        total += np.maximum(cur - prev, 0.0)
        prev = cur
    coords = {
        name: coord
        for name, coord in first.coords.items()
        if STEP not in coord.dims and name != STEP and coord.ndim > 0
    }
    return xr.DataArray(
        total,
        dims=first.dims,
        coords=coords,
        name="positive_updates",
        attrs={
            "long_name": "positive updates PU = sum_t max(S_t - S_{t-1}, 0), NaN as 0",
            "n_steps": int(scores.sizes[STEP]),
        },
    )


def _pu_vector(pu: xr.DataArray | np.ndarray, what: str) -> np.ndarray:
    v = unit_vector(pu.values if isinstance(pu, xr.DataArray) else pu)
    if v.size == 0:
        raise InvalidInputError(f"{what} needs at least one unit; the array is empty")
    if np.any(v < 0):
        raise InvalidInputError(
            f"{what} needs non-negative positive updates; pass positive_updates(scores), "
            "not the scores themselves"
        )
    return v


def top_count(n_units: int, q: float) -> int:
    """How many units the top fraction ``q`` of ``n_units`` holds: ``max(1, ceil(q·N))``.

    ``q·N`` is rounded to 6 decimals first, so that ``0.01 × 300`` (3.0000000000000004 in
    floating point) gives 3 units, not 4.

    >>> top_count(300, 0.01), top_count(250, 0.01), top_count(10, 0.001), top_count(7, 1.0)
    (3, 3, 1, 7)
    """
    if not (isinstance(q, int | float) and 0 < q <= 1):
        raise InvalidInputError(f"q={q!r}: the top fraction must lie in (0, 1], e.g. 0.01")
    return max(1, math.ceil(round(q * n_units, 6)))


def backbone_share(pu: xr.DataArray | np.ndarray, q: float = 0.01) -> float:
    """Share of the total positive update held by the top fraction ``q`` of units.

    The top ``m = top_count(N, q) = max(1, ceil(q·N))`` units by PU are counted. Units
    tied at the cut have the same PU, so the sum (and the share) is the same whichever
    of them is counted: the result does not depend on how ties are broken. NaN counts
    as 0 (and as a unit). Returns NaN when every PU is 0 (nothing was learned).
    """
    v = _pu_vector(pu, "backbone_share")
    m = top_count(v.size, q)
    total = v.sum()
    if total <= 0:
        return math.nan
    top = np.partition(v, v.size - m)[v.size - m :]
    return float(top.sum() / total)


def backbone_curve(
    pu: xr.DataArray | np.ndarray, qs: Sequence[float] | None = None
) -> xr.DataArray:
    """:func:`backbone_share` at each fraction in ``qs`` (default :data:`DEFAULT_QS`).

    Returns a DataArray over dim ``q`` with coord ``n_top`` (the unit count at each q);
    all NaN when every PU is 0.
    """
    v = _pu_vector(pu, "backbone_curve")
    qs = DEFAULT_QS if qs is None else tuple(qs)
    if len(qs) == 0:
        raise InvalidInputError("backbone_curve needs at least one fraction q")
    counts = [top_count(v.size, float(q)) for q in qs]
    total = v.sum()
    cum = np.cumsum(np.sort(v)[::-1])
    shares = (
        np.full(len(qs), np.nan) if total <= 0 else np.array([cum[m - 1] / total for m in counts])
    )
    return xr.DataArray(
        shares,
        dims=(QUANTILE,),
        coords={QUANTILE: np.asarray(qs, dtype=np.float64), "n_top": (QUANTILE, counts)},
        name="backbone_curve",
        attrs={"long_name": "share of total PU held by the top max(1, ceil(q*N)) units"},
    )


def lorenz(pu: xr.DataArray | np.ndarray, *, points: int | None = None) -> xr.DataArray:
    """Lorenz curve: cumulative share of PU held by the lowest population share of units.

    Units are sorted by PU ascending; the curve runs through ``(i/N, Σ_{j≤i} PU_(j)/ΣPU)``
    for ``i = 0…N`` (so it starts at (0, 0) and ends at (1, 1)). With ``points``, the
    piecewise-linear curve is read at ``points`` evenly spaced population shares instead
    (exact at the break points, a compact form for large N). All NaN when every PU is 0.
    """
    v = np.sort(_pu_vector(pu, "lorenz"))
    x = np.arange(v.size + 1, dtype=np.float64) / v.size
    total = v.sum()
    if total <= 0:
        y = np.full(v.size + 1, np.nan)
    else:
        y = np.concatenate([[0.0], np.cumsum(v) / total])
        y[-1] = 1.0
    if points is not None:
        if points < 2:
            raise InvalidInputError(f"points={points}: a Lorenz curve needs at least 2 points")
        xp = np.linspace(0.0, 1.0, points)
        y = np.full(points, np.nan) if total <= 0 else np.interp(xp, x, y)
        x = xp
    return xr.DataArray(
        y,
        dims=(POPULATION,),
        coords={POPULATION: x},
        name="lorenz",
        attrs={"long_name": "cumulative share of PU held by the lowest population share"},
    )


def gini(pu: xr.DataArray | np.ndarray) -> float:
    """Gini coefficient of PU: ``Σ_i Σ_j |x_i − x_j| / (2 N² mean)``, i.e. ``1 − 2·(area
    under the Lorenz curve)``. 0 = every unit learned equally; (N−1)/N = one unit learned
    everything. NaN when every PU is 0.
    """
    v = np.sort(_pu_vector(pu, "gini"))
    total = v.sum()
    if total <= 0:
        return math.nan
    n = v.size
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * np.dot(ranks, v) / (n * total) - (n + 1) / n)


def normalized_entropy(pu: xr.DataArray | np.ndarray) -> float:
    """``H(p) / log N`` with ``p = PU / ΣPU`` (natural log, ``0 log 0 = 0``).

    1 = updates spread evenly over all N units; near 0 = concentrated in a few. NaN when
    every PU is 0, or when there is a single unit (log 1 = 0).
    """
    v = _pu_vector(pu, "normalized_entropy")
    total = v.sum()
    if total <= 0 or v.size < 2:
        return math.nan
    p = v[v > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(v.size))


__all__ = [
    "DEFAULT_QS",
    "backbone_curve",
    "backbone_share",
    "gini",
    "lorenz",
    "normalized_entropy",
    "positive_updates",
    "top_count",
]
