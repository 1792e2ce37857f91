"""The headline table: one list of rows, drawn on the report page and printed by ``mechmoe demo``.

:func:`headline_rows` turns the :func:`mechmoe.analysis.headline` figures of one run or
two (read at one or more masked-head counts) into ``(measure, value, …)`` rows of strings.
The report's page and the demo's terminal table both render its output, so the two
cannot drift apart.

Examples
--------
>>> counted(1, "head"), counted(16, "head"), counted(2, "checkpoint", "checkpoints")
('1 head', '16 heads', '2 checkpoints')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mechmoe._types import HEAD, LAYER, SEED
from mechmoe.core.errors import InvalidInputError

if TYPE_CHECKING:
    import xarray as xr


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, the noun in the plural unless ``n`` is 1 (default plural: ``noun + "s"``)."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def total_heads(ds: xr.Dataset) -> int | None:
    """Attention heads of the store's model, all layers (``None`` without a ``head`` dim)."""
    if HEAD not in ds.sizes or LAYER not in ds.sizes:
        return None
    return int(ds.sizes[HEAD] * ds.sizes[LAYER])


def random_draws(ds: xr.Dataset) -> int | None:
    """Random-head draws of the store's robustness measure (``None`` without one)."""
    for name in ("robust_drop_random", "robust_hit_random"):
        if name in ds.data_vars:
            var = ds[name]
            return int(var.sizes[SEED]) if SEED in var.dims else 1
    return None


def head_share(n: int, total: int) -> str:
    """``n`` of ``total`` heads as a whole percentage, e.g. ``"6%"``."""
    return f"{100 * n / total:.0f}%"


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x: Any) -> str:
    return "n/a" if _nan(x) else f"{100 * x:.1f}%"


def _same(values: Sequence[int | None]) -> int | None:
    """The one value all runs share, else ``None``."""
    return values[0] if values and all(v == values[0] for v in values) else None


def _of(values: Sequence[int | None]) -> str:
    """``" of 16 heads"`` (all runs alike), ``" of 256 / 1024 heads"``, or ``""`` if unknown."""
    if not values or any(v is None for v in values):
        return ""
    if len(set(values)) == 1:
        return f" of {counted(values[0], 'head')}"  # type: ignore[arg-type]
    return f" of {' / '.join(str(v) for v in values)} heads"


def headline_rows(
    stores: Sequence[xr.Dataset],
    by_count: Sequence[Sequence[Mapping[str, Any]]],
    *,
    notes: Mapping[int, str] | None = None,
    extra: Sequence[Sequence[str]] = (),
) -> list[tuple[str, ...]]:
    """The rows of the headline table: ``(measure, one value per run)``.

    Parameters
    ----------
    stores
        The runs' trajectory stores, in column order (they give the head and draw counts
        the masking rows name).
    by_count
        Per masked-head count, one :func:`mechmoe.analysis.headline` dict per run. The
        first count's dicts give the backbone and consolidation rows too; every count
        gives a pair of rows, top heads masked and random heads (the control).
    notes
        Masked-head count → the text in the parentheses of its "top heads" row, in
        place of the default share of all heads (e.g. ``"6%; paper: 10 of 256"``).
    extra
        More rows measured elsewhere, ``(measure, one value per run)``, appended last.

    Returns
    -------
    list of tuple of str
    """
    n_runs = len(stores)
    if not by_count or any(len(heads) != n_runs for heads in by_count):
        raise InvalidInputError(
            f"headline_rows needs, per masked-head count, {counted(n_runs, 'headline')}"
        )
    for row in extra:
        if len(row) != n_runs + 1:
            raise InvalidInputError(
                f"headline row {tuple(row)!r}: give a measure and {counted(n_runs, 'value')}"
            )
    notes = notes or {}
    heads = by_count[0]
    h0 = heads[0]
    totals = [total_heads(ds) for ds in stores]
    total, of = _same(totals), _of(totals)
    draws = _same([random_draws(ds) for ds in stores])

    def step(h: Mapping[str, Any]) -> str:
        if not _nan(h["consolidation_step"]):
            # a checkpoint's step: whole, grouped ("85,000"); ":g" read 1,220,000 as "1.22e+06"
            return f"{int(h['consolidation_step']):,}"
        # NaN: never consolidated, unless there were no neuron scores to consolidate
        # (a store without neuron_lpi, or with one checkpoint: no backbone share either)
        return "n/a" if _nan(h["backbone_share"]) else "never"

    rows: list[tuple[str, ...]] = [
        (f"top-{100 * h0['q']:g}% backbone share", *(_pct(h["backbone_share"]) for h in heads)),
        (f"consolidation step (ρ vs final ≥ {h0['tau']:g})", *(step(h) for h in heads)),
    ]
    for at_n in by_count:
        n = at_n[0]["n_masked"]
        k = at_n[0]["hit_k"] or "k"
        note = notes.get(n, head_share(n, total) if total else "")
        top = f"top-{n}{of}" if of else f"top-{counted(n, 'head')}"
        rnd = f"{n} random{of}" if of else counted(n, "random head")
        control = f"control, mean of {counted(draws, 'draw')}" if draws else "control"
        rows += [
            (
                f"HIT@{k} drop, {top} masked" + (f" ({note})" if note else ""),
                *(_pct(h["hit_drop_top"]) for h in at_n),
            ),
            (f"HIT@{k} drop, {rnd} ({control})", *(_pct(h["hit_drop_random"]) for h in at_n)),
        ]
    rows += [tuple(row) for row in extra]
    return rows


__all__ = ["counted", "head_share", "headline_rows", "random_draws", "total_heads"]
