"""Functional robustness over a run: HIT@k drop when the top-n heads are masked vs random heads.

Examples
--------
>>> import numpy as np, xarray as xr
>>> ds = xr.Dataset({
...     "robust_hit_base": ("step", [0.5, 0.8]),
...     "robust_hit_top": (("step", "n"), [[0.25], [0.6]]),
...     "robust_hit_random": (("step", "n", "seed"), [[[0.5, 0.4]], [[0.8, 0.72]]]),
... }, coords={"step": [0, 100], "n": [10]})
>>> r = robustness_curves(ds)
>>> r["drop_top"].sel(n=10).round(6).values.tolist()
[0.5, 0.25]
>>> r["drop_random_mean"].sel(n=10).round(6).values.tolist()
[0.1, 0.05]
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from mechmoe._types import N_MASKED, SEED, STEP
from mechmoe.analysis._common import NotApplicableError


def _drop(ds: xr.Dataset, which: str) -> xr.DataArray:
    drop_name, hit_name = f"robust_drop_{which}", f"robust_hit_{which}"
    if drop_name in ds.data_vars:
        return ds[drop_name].astype(np.float64)
    if hit_name in ds.data_vars and "robust_hit_base" in ds.data_vars:
        base = ds["robust_hit_base"].astype(np.float64)
        # a checkpoint that recalls nothing has no drop to speak of: NaN, not inf
        return 1.0 - ds[hit_name] / base.where(base > 0)
    raise NotApplicableError(
        f"the robustness curves need {drop_name!r} (or {hit_name!r} and 'robust_hit_base'), "
        "which this store lacks; run the sweep with the 'robustness' measure"
    )


def robust_k(ds: xr.Dataset) -> int | None:
    """The HIT@k cut-off of the store's robustness measure, where recorded."""
    for name in ("robust_drop_top", "robust_hit_top", "robust_hit_base"):
        if name in ds.data_vars and "k" in ds[name].attrs:
            return int(ds[name].attrs["k"])
    for key in ("robust_k", "k"):
        if key in ds.attrs:
            return int(ds.attrs[key])
    return None


def robustness_curves(ds: xr.Dataset) -> xr.Dataset:
    """Relative HIT@k drop per step and number of masked heads: top-n heads vs random heads.

    ``drop = 1 − HIT@k(masked) / HIT@k(unmasked)`` (the store's ``robust_drop_*``, or
    computed from ``robust_hit_*`` where only those exist; NaN where the unmasked HIT@k is
    0).

    Returns
    -------
    xarray.Dataset
        Over (``step``, ``n``): ``drop_top``; ``drop_random_mean`` and ``drop_random_std``
        over the random seeds (sample std, ``ddof=1``: NaN with a single seed; a NaN at
        any seed makes both NaN); ``excess_drop = drop_top − drop_random_mean``; and
        ``hit_base`` (step) where the store has it. Attr ``k`` = the HIT cut-off.

    Raises
    ------
    NotApplicableError
        When the store has no robustness measure.
    """
    top = _drop(ds, "top")
    rand = _drop(ds, "random")
    n_seeds = rand.sizes.get(SEED, 1)
    mean = rand.mean(SEED, skipna=False) if SEED in rand.dims else rand
    if SEED in rand.dims and n_seeds >= 2:
        std = rand.std(SEED, ddof=1, skipna=False)
    else:
        std = xr.full_like(mean, np.nan)
    out = xr.Dataset(
        {
            "drop_top": top,
            "drop_random_mean": mean,
            "drop_random_std": std,
            "excess_drop": top - mean,
        }
    )
    if "robust_hit_base" in ds.data_vars:
        out["hit_base"] = ds["robust_hit_base"].astype(np.float64)
    for name in out.data_vars:
        out[name].attrs = {}
    out["drop_top"].attrs["long_name"] = "1 - HIT@k with the top-n heads masked / unmasked"
    out["drop_random_mean"].attrs["long_name"] = "mean over seeds of the drop with n random heads"
    out["drop_random_std"].attrs["long_name"] = "sample std (ddof=1) over seeds of that drop"
    k = robust_k(ds)
    out.attrs = {"k": k} if k is not None else {}
    out.attrs["n_seeds"] = int(n_seeds)
    dims = [d for d in (STEP, N_MASKED) if d in out.dims]
    return out.transpose(*dims, ...)


__all__ = ["robust_k", "robustness_curves"]
