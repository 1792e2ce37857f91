"""Measures: what a trajectory sweep computes on each loaded checkpoint.

A :class:`Measure` is a small object with a ``name``, the store ``variables`` it produces,
``applies_to(model)``, ``config()`` (its options, recorded in the store) and a call
``measure(model, probe) -> xarray.Dataset`` returning those variables *without* the
``step`` dim (the sweep adds ``step``, ``tokens``, ``revision`` and ``weights_hash``).

Built-in measures (:mod:`mechmoe.trajectory.builtin_measures`, imported when one is first
asked for) wrap the existing operations; none re-implements their math:

============== ======================================== =====================================
name           variables                                wraps
============== ======================================== =====================================
neuron_lpi     neuron_score, neuron_n_chosen            ``attribute(level="neuron")``
expert_lpi     expert_score, expert_n_chosen            ``attribute(level="expert")``
head_lpi       head_score                               ``attribute(level="head")``
layer_lpi      attn_score, ffn_score                    ``attribute(level="attn"/"ffn")``
hit            hit, mrr                                 ``evaluate`` + ``summarize``
robustness     robust_hit_base, robust_hit_top, …       ``head_robustness``
expert_load    expert_load                              one ``Model.capture`` pass
routing        routing_choice                           one ``Model.capture`` pass
============== ======================================== =====================================

Third-party measures register with :func:`register_measure` or through the
``mechmoe.measures`` entry-point group (each entry point's name is the measure name and
it loads a factory: a class or function taking the measure's options as keywords).

Examples
--------
>>> from mechmoe.testing import tiny_model
>>> from mechmoe.probes import load_probe
>>> from mechmoe.trajectory.measures import get_measure
>>> measure = get_measure("expert_load")
>>> ds = measure(tiny_model("olmoe"), load_probe("adj_antonym").head(2))
>>> ds["expert_load"].dims, float(ds["expert_load"].sum("expert")[0])
(('layer', 'expert'), 1.0)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mechmoe.core.checks import closest, entry_point
from mechmoe.core.errors import (
    InvalidInputError,
    InvalidNameError,
    RegistryTypeError,
)
from mechmoe.core.lazy import lazy_getattr
from mechmoe.core.registry import Registry

if TYPE_CHECKING:
    import xarray as xr

    from mechmoe.model import Model
    from mechmoe.probes import ProbeSet

ENTRY_POINT_GROUP = "mechmoe.measures"


@runtime_checkable
class Measure(Protocol):
    """Something measured on one loaded model with one probe set.

    Attributes
    ----------
    name
        The registry name, e.g. ``"neuron_lpi"``.
    variables
        The store variables the call returns (see docs/trajectories.md).
    """

    name: str
    variables: tuple[str, ...]

    def applies_to(self, model: Model) -> bool:
        """Whether the measure means anything on ``model`` (e.g. routing: MoE only)."""
        ...

    def config(self) -> dict[str, Any]:
        """The measure's options, JSON-able; recorded in the store's config."""
        ...

    def __call__(self, model: Model, probe: ProbeSet) -> xr.Dataset:
        """The measure's variables on ``model``, without a ``step`` dim."""
        ...


# ---- registry ------------------------------------------------------------------------------------
#: A measure's factory: a class or function taking the measure's options as keywords.
Factory = Callable[..., Measure]


def _identifier(name: str) -> None:
    if not name.isidentifier():
        raise InvalidNameError(f"measure name {name!r} must be a Python identifier")


MEASURES: Registry[Factory] = Registry(
    "measure",
    group=ENTRY_POINT_GROUP,
    check=callable,
    expected="a callable (a class or function that builds the measure)",
    validate_name=_identifier,
    how_to_add="register others with mechmoe.trajectory.register_measure or the "
    "'mechmoe.measures' entry-point group",
    builtins={
        name: f"mechmoe.trajectory.builtin_measures:{cls}"
        for name, cls in (
            ("neuron_lpi", "NeuronLPI"),
            ("expert_lpi", "ExpertLPI"),
            ("head_lpi", "HeadLPI"),
            ("layer_lpi", "LayerLPI"),
            ("hit", "Hit"),
            ("robustness", "Robustness"),
            ("expert_load", "ExpertLoad"),
            ("routing", "Routing"),
        )
    },
)

#: Every built-in measure, in the order a sweep runs them by default.
DEFAULT_MEASURES: tuple[str, ...] = tuple(name for name, _ in MEASURES.builtin_entries())


@entry_point
def register_measure(name: str, factory: Factory | str, *, replace: bool = False) -> Factory | str:
    """Register ``factory`` (a class or function taking the options as keywords, or a
    ``"module:attr"`` string imported on first use) as ``name``.

    A name already known (built-ins included) raises
    :class:`~mechmoe.core.errors.DuplicateNameError` (also a ``ValueError``) unless
    ``replace=True``.
    """
    return MEASURES.register(name, factory, replace=replace)


def unregister_measure(name: str) -> None:
    """Forget a registered measure (a built-in it replaced comes back); a no-op for
    names that were not registered."""
    MEASURES.unregister(name)


def list_measures() -> list[str]:
    """Every known measure name: built-ins first (in default order), then others sorted."""
    return MEASURES.names()


def measure_options(name: str) -> list[str]:
    """The option names measure ``name`` accepts."""
    params = inspect.signature(MEASURES.get(name)).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


@entry_point
def get_measure(name: str, **options: Any) -> Measure:
    """The measure ``name`` built with ``options``.

    Unknown names get a "did you mean"; unknown options and bad values one line naming
    the measure and the option; a factory that builds something else than a measure of
    that name a :class:`~mechmoe.core.errors.RegistryTypeError`.

    Examples
    --------
    >>> from mechmoe.trajectory.measures import get_measure
    >>> get_measure("hit", ks=[10, 1]).config()
    {'ks': [1, 10], 'batch_size': 32}
    """
    factory = MEASURES.get(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        accepted = measure_options(name)
        for option in options:
            if option not in accepted:
                close = closest(option, accepted, cutoff=0.5)
                hint = f" (did you mean {close!r}?)" if close else ""
                raise InvalidInputError(
                    f"measure {name!r} has no option {option!r}{hint}; its options: "
                    f"{', '.join(accepted) or 'none'}"
                )
    measure = factory(**options)
    if not isinstance(measure, Measure):
        raise RegistryTypeError(
            f"the factory of measure {name!r} returned a {type(measure).__name__}, which lacks "
            "the Measure protocol (name, variables, applies_to, config, __call__)"
        )
    if measure.name != name:
        raise RegistryTypeError(f"measure registered as {name!r} calls itself {measure.name!r}")
    return measure


#: The built-in measure classes stay importable from here (imported on first use).
__getattr__ = lazy_getattr(
    __name__,
    {
        lazy.target.partition(":")[2]: tuple(lazy.target.split(":"))  # type: ignore[misc]
        for _, lazy in MEASURES.builtin_entries()
    },
)


__all__ = [
    "DEFAULT_MEASURES",
    "ENTRY_POINT_GROUP",
    "MEASURES",
    "Measure",
    "get_measure",
    "list_measures",
    "measure_options",
    "register_measure",
    "unregister_measure",
]
