"""Helpers shared by the statistics: errors, dim checks, flattening to one unit axis."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mechmoe._types import STEP
from mechmoe.core.errors import InvalidInputError

if TYPE_CHECKING:
    import xarray as xr


class NotApplicableError(InvalidInputError):
    """A statistic that does not apply to this store (routing statistics of a dense model,
    robustness of a run that did not measure it)."""


def require_step(scores: xr.DataArray, what: str) -> xr.DataArray:
    """``scores`` with a ``step`` dim of unique steps, sorted ascending."""
    if STEP not in scores.dims:
        raise InvalidInputError(
            f"{what} needs scores with a {STEP!r} dim (one entry per checkpoint); "
            f"got dims {tuple(scores.dims)}"
        )
    if scores.sizes[STEP] == 0:
        raise InvalidInputError(f"{what} needs at least one checkpoint; the {STEP!r} dim is empty")
    if STEP in scores.coords:
        steps = np.asarray(scores[STEP].values)
        if len(np.unique(steps)) != len(steps):
            raise InvalidInputError(
                f"{what}: the {STEP!r} coordinate repeats a step; give each checkpoint once"
            )
        if np.any(np.diff(steps) < 0):
            scores = scores.sortby(STEP)
    return scores


def measured_steps(scores: xr.DataArray, what: str) -> xr.DataArray:
    """``scores`` without the steps where every value is NaN.

    A store reads NaN at every entry of a step where the measure was not run (one added
    to the store later); such a step has no scores at all and is left out, while an
    isolated NaN (a unit that was not scored) counts as 0 where the scores are used.
    """
    others = [d for d in scores.dims if d != STEP]
    keep = (
        np.asarray(scores.notnull().any(others).values)
        if others
        else np.asarray(scores.notnull().values)
    )
    if not keep.any():
        raise InvalidInputError(f"{what}: no checkpoint has any score (every value is NaN)")
    return scores if keep.all() else scores.isel({STEP: np.flatnonzero(keep)})


def unit_vector(values: np.ndarray) -> np.ndarray:
    """All units as one float64 vector, NaN (unchosen / not scored) as 0."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    return np.where(np.isnan(flat), 0.0, flat)


def require_var(ds: xr.Dataset, name: str, what: str, measure: str) -> xr.DataArray:
    if name not in ds.data_vars:
        raise NotApplicableError(
            f"{what} needs the {name!r} variable, which this store lacks; "
            f"run the sweep with the {measure!r} measure"
        )
    return ds[name]


__all__ = ["NotApplicableError", "measured_steps", "require_step", "require_var", "unit_vector"]
