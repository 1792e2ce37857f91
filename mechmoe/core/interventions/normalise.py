"""User input → the normalised fields of the intervention values, in one place.

Users write ``{layer: [index, …]}``, ``(layer, index)`` pairs, ``{layer: {index: factor}}``
or one ``factor=``; every value stores the same information as sorted tuples, so values
stay immutable, hashable and comparable by content. Bad input raises
:class:`~mechmoe.core.errors.InvalidInputError` naming what was wrong.

:func:`init_fields` is the one place that writes the fields of a frozen value: each
value's ``__init__`` normalises its input and hands the results to it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import SupportsFloat, SupportsIndex, TypeAlias

import numpy as np
import torch
from torch import Tensor

from mechmoe.core.errors import InvalidInputError

# ---- the normalised forms (what the values store) ---------------------------------------

#: ``((layer, (index, …)), …)``, layers and indices sorted, no empty layer
LayerSets: TypeAlias = tuple[tuple[int, tuple[int, ...]], ...]
#: ``((layer, ((index, factor), …)), …)``, sorted
LayerFactors: TypeAlias = tuple[tuple[int, tuple[tuple[int, float], ...]], ...]
#: ``(((layer, expert, neuron), factor), …)``, sorted
NeuronFactors: TypeAlias = tuple[tuple[tuple[int, int, int], float], ...]
#: ``((layer, rows), …)`` with ``rows`` an ``(n_heads, head_dim)`` table of floats
MeanTable: TypeAlias = tuple[tuple[int, tuple[tuple[float, ...], ...]], ...]

# ---- what users may write -----------------------------------------------------------------

#: ``{layer: [index, …] or index}`` or ``(layer, index)`` pairs
LayerSetsInput: TypeAlias = (
    Mapping[SupportsIndex, Iterable[SupportsIndex] | SupportsIndex]
    | Iterable[tuple[SupportsIndex, SupportsIndex]]
)
#: ``{layer: {index: factor}}``, or ``{layer: [index, …]}`` / pairs with one ``factor=``
LayerFactorsInput: TypeAlias = (
    Mapping[
        SupportsIndex,
        Mapping[SupportsIndex, SupportsFloat] | Iterable[SupportsIndex] | SupportsIndex,
    ]
    | Iterable[tuple[SupportsIndex, SupportsIndex]]
)
#: ``{(layer, expert, neuron): factor}``, or triples with one ``factor=``
NeuronFactorsInput: TypeAlias = (
    Mapping[tuple[SupportsIndex, ...], SupportsFloat] | Iterable[tuple[SupportsIndex, ...]]
)
#: ``{layer: array (n_heads, head_dim)}``
MeansInput: TypeAlias = Mapping[
    SupportsIndex, Tensor | np.ndarray | Sequence[Sequence[SupportsFloat]]
]


def init_fields(value: object, **fields: object) -> None:
    """Set the fields of a frozen value from its own ``__init__`` (nowhere else)."""
    for name, field_value in fields.items():
        object.__setattr__(value, name, field_value)


def as_index(value: object, what: str) -> int:
    """A non-negative integer (``bool`` is refused: ``True`` is not a layer)."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{what} must be an integer, got {value!r}")
    try:
        out = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidInputError(f"{what} must be an integer, got {value!r}") from None
    if out < 0:
        raise InvalidInputError(f"{what} must be non-negative, got {out}")
    return out


def as_factor(value: object, what: str) -> float:
    """A finite float."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise InvalidInputError(f"{what} must be finite, got {out}")
    return out


def _one_or_many(items: object) -> Iterable[object]:
    """``[i]`` for a single index, the items otherwise."""
    return items if isinstance(items, Iterable) else [items]


def _pair(pair: object, what: str) -> tuple[int, int]:
    try:
        layer, i = pair  # type: ignore[misc]
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"{what}: give {{layer: [indices]}} or (layer, index) pairs, got {pair!r}"
        ) from None
    return as_index(layer, "layer"), as_index(i, what)


def layer_sets(spec: LayerSetsInput, what: str) -> LayerSets:
    """``{layer: [i, …]}`` or ``[(layer, i), …]`` → ``((layer, (i, …)), …)`` sorted."""
    merged: dict[int, set[int]] = {}
    if isinstance(spec, Mapping):
        for layer, items in spec.items():
            row = merged.setdefault(as_index(layer, "layer"), set())
            row.update(as_index(i, what) for i in _one_or_many(items))
    else:
        for pair in spec:
            layer, i = _pair(pair, what)
            merged.setdefault(layer, set()).add(i)
    return tuple((layer, tuple(sorted(s))) for layer, s in sorted(merged.items()) if s)


def layer_factors(spec: LayerFactorsInput, factor: SupportsFloat | None, what: str) -> LayerFactors:
    """``{layer: {i: f}}`` or ``{layer: [i]}`` / pairs with ``factor`` → sorted nested tuples.

    An index listed twice is scaled twice: its factors multiply.
    """
    merged: dict[int, dict[int, float]] = {}

    def scale(layer: int, i: int, f: float) -> None:
        row = merged.setdefault(layer, {})
        row[i] = row.get(i, 1.0) * f

    def one_factor() -> float:
        if factor is None:
            raise InvalidInputError(f"{what}: give {{layer: {{index: factor}}}} or factor=")
        return as_factor(factor, "factor")

    if not isinstance(spec, Mapping):
        f = one_factor()
        for pair in spec:
            scale(*_pair(pair, what), f)
        return _sorted_factors(merged)
    for layer_key, items in spec.items():
        layer = as_index(layer_key, "layer")
        merged.setdefault(layer, {})
        if isinstance(items, Mapping):
            if factor is not None:
                raise InvalidInputError(f"{what}: give factors per index or one factor=, not both")
            for i, f_i in items.items():
                scale(
                    layer,
                    as_index(i, what),
                    as_factor(f_i, f"factor of {what} {i} at layer {layer}"),
                )
        else:
            f = one_factor()
            for i in _one_or_many(items):
                scale(layer, as_index(i, what), f)
    return _sorted_factors(merged)


def _sorted_factors(merged: dict[int, dict[int, float]]) -> LayerFactors:
    return tuple(
        (layer, tuple(sorted(row.items()))) for layer, row in sorted(merged.items()) if row
    )


def neuron_factors(spec: NeuronFactorsInput, factor: SupportsFloat | None) -> NeuronFactors:
    """``{(layer, expert, neuron): f}`` or triples with ``factor`` → sorted pairs."""
    out: dict[tuple[int, int, int], float] = {}
    if isinstance(spec, Mapping):
        if factor is not None:
            raise InvalidInputError("give factors per neuron or one factor=, not both")
        items: Iterable[tuple[object, object]] = spec.items()
    else:
        if factor is None:
            raise InvalidInputError("give {(layer, expert, neuron): factor} or factor=")
        items = ((key, factor) for key in spec)
    for key, f in items:
        try:
            layer, expert, neuron = key  # type: ignore[misc]
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"neurons are (layer, expert, neuron) triples (expert 0 on dense layers), got {key!r}"
            ) from None
        triple = (as_index(layer, "layer"), as_index(expert, "expert"), as_index(neuron, "neuron"))
        out[triple] = out.get(triple, 1.0) * as_factor(f, f"factor of neuron {triple}")
    return tuple(sorted(out.items()))


def mean_table(means: MeansInput, what: str) -> MeanTable:
    """``{layer: array (n_heads, head_dim)}`` → ``((layer, rows), …)`` of float64 values."""
    fixed: dict[int, tuple[tuple[float, ...], ...]] = {}
    for layer, arr in dict(means).items():
        t = torch.as_tensor(arr, dtype=torch.float64).detach().cpu()
        if t.ndim != 2:
            raise InvalidInputError(
                f"{what}: means of layer {layer} must be (n_heads, head_dim), got shape {tuple(t.shape)}"
            )
        fixed[as_index(layer, "layer")] = tuple(tuple(row) for row in t.tolist())
    return tuple(sorted(fixed.items()))


__all__ = [
    "LayerFactors",
    "LayerFactorsInput",
    "LayerSets",
    "LayerSetsInput",
    "MeanTable",
    "MeansInput",
    "NeuronFactors",
    "NeuronFactorsInput",
    "as_factor",
    "as_index",
    "init_fields",
    "layer_factors",
    "layer_sets",
    "mean_table",
    "neuron_factors",
]
