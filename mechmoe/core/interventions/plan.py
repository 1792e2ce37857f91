"""The base of every intervention value, and plans: ordered, checked combinations of them.

A value belongs to a *family* (the class that declared ``family=True`` among its bases,
:class:`Intervention` itself for values that declared none). A plan hands the values of
each family to the family's two class methods:

- :meth:`Intervention.check_combination` refuses contradictions among them, once without
  a model when the plan is built (``a + b``) and once with the model before the pass;
- :meth:`Intervention.merged` turns them into the one edit a pass runs, or returns
  ``None`` for values that run as they are, in plan order.

Head masks, neuron scalings and routing values are three families
(:mod:`~mechmoe.core.interventions.heads`, :mod:`~mechmoe.core.interventions.neurons`,
:mod:`~mechmoe.core.interventions.routing`); a third-party value joins one by
subclassing its base (e.g. :class:`~mechmoe.core.interventions.RoutingEdit`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mechmoe.core.edits import Edit, Need, Site, SiteValue
from mechmoe.core.errors import InvalidInputError, InvalidTypeError
from mechmoe.core.interventions.normalise import init_fields

if TYPE_CHECKING:
    from mechmoe.core.edits import EditContext
    from mechmoe.core.types import ModelView


class Intervention(ABC):
    """Base of every intervention value: composition, families and the :class:`Edit` protocol.

    Subclasses are frozen dataclasses; ``validate`` checks one value against a model
    (ranges), ``apply`` is its edit at a site. ``class X(Base, family=True)`` starts a
    family whose ``check_combination``/``merged`` govern ``X`` and its subclasses.
    """

    sites: ClassVar[frozenset[Site]] = frozenset()
    #: what the value reads besides its sites' values (see :class:`~mechmoe.core.edits.Edit`)
    needs: ClassVar[frozenset[Need]] = frozenset()
    #: the class whose combination rules govern this value in a plan
    family: ClassVar[type[Intervention]]

    def __init_subclass__(cls, *, family: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if family:
            cls.family = cls

    @abstractmethod
    def validate(self, model: ModelView) -> None:
        """Check this value alone against ``model`` (indices in range, layers that fit)."""

    @abstractmethod
    def apply(self, site: Site, layer: int, value: SiteValue, ctx: EditContext) -> SiteValue | None:
        """The edit at ``site`` of ``layer``: a new value, or ``None`` to leave it."""

    def layers(self) -> tuple[int, ...]:
        """The layers this value names (``()`` for 'every MoE layer' in :class:`SetTopK`)."""
        return ()

    def is_empty(self) -> bool:
        """True when applying this value changes nothing."""
        return False

    @classmethod
    def check_combination(cls, values: Sequence[Intervention], model: ModelView | None) -> None:
        """Refuse contradictions among ``values`` of this family (``model``: ``None`` when
        the plan is built, the model before the pass). The base refuses none."""
        return None

    @classmethod
    def merged(cls, values: Sequence[Intervention]) -> Edit | None:
        """The one edit that runs ``values`` of this family, or ``None``: each runs as it
        is, in plan order (the base)."""
        return None

    @property
    def edits(self) -> tuple[Edit, ...]:
        """What a capture pass runs for this value alone: a one-item :class:`Plan`."""
        return Plan((self,)).edits

    def __add__(self, other: object) -> Plan:
        return compose(self, other)

    def __radd__(self, other: object) -> Plan:
        # sum([a, b, c]) starts from 0
        if isinstance(other, int) and other == 0:
            return compose(self)
        return compose(other, self)


Intervention.family = Intervention


@dataclass(frozen=True)
class _PlanCheck:
    """The first edit of a plan: validates the whole combination before the pass."""

    plan: Plan
    sites: frozenset[Site] = frozenset()
    needs: frozenset[Need] = frozenset()

    def validate(self, model: ModelView) -> None:
        self.plan.validate(model)

    def apply(self, site: Site, layer: int, value: SiteValue, ctx: EditContext) -> None:
        return None


@dataclass(frozen=True, init=False)
class Plan:
    """An ordered, immutable combination of interventions.

    Build it with ``a + b``, :func:`compose` or ``Plan((a, b))``. Anything that takes
    ``interventions=`` accepts a plan; its :attr:`edits` start with a check that runs the
    combination's validation before the forward pass.

    Examples
    --------
    >>> from mechmoe.core.interventions import BanExperts, ForceExperts
    >>> BanExperts({0: [1]}) + ForceExperts({0: [1]})
    Traceback (most recent call last):
    ...
    mechmoe.core.errors.InvalidInputError: contradictory routing at layer 0: expert 1 is both banned and forced
    """

    items: tuple[Intervention, ...]

    def __init__(self, items: Iterable[Intervention] = ()) -> None:
        values = tuple(items)
        for it in values:
            if not isinstance(it, Intervention):
                raise InvalidInputError(f"not an intervention: {it!r}")
        init_fields(self, items=values)
        self._check_families(None)

    # -- container --
    def __iter__(self) -> Iterator[Intervention]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __add__(self, other: object) -> Plan:
        return compose(self, other)

    def __radd__(self, other: object) -> Plan:
        if isinstance(other, int) and other == 0:
            return self
        return compose(other, self)

    def __repr__(self) -> str:
        return " + ".join(repr(it) for it in self.items) if self.items else "Plan(())"

    def is_empty(self) -> bool:
        return all(it.is_empty() for it in self.items)

    def families(self) -> dict[type[Intervention], list[Intervention]]:
        """The plan's values by family, families in order of first appearance."""
        out: dict[type[Intervention], list[Intervention]] = {}
        for it in self.items:
            out.setdefault(it.family, []).append(it)
        return out

    @property
    def edits(self) -> tuple[Edit, ...]:
        """What a capture pass runs: the plan's check, the values that run as they are
        (in plan order), then one merged edit per merging family (all the routing values
        as one routing decision per layer; the neuron values as one product)."""
        merged: list[Edit] = []
        as_they_are: set[type[Intervention]] = set()
        for family, values in self.families().items():
            edit = family.merged(values)
            if edit is None:
                as_they_are.add(family)
            else:
                merged.append(edit)
        rest = tuple(it for it in self.items if it.family in as_they_are)
        return (_PlanCheck(self), *rest, *merged)

    # A plan is itself an Edit, so it fits wherever one edit is accepted; backends
    # normally unpack it through ``edits`` instead.
    @property
    def sites(self) -> frozenset[Site]:
        return frozenset().union(*(it.sites for it in self.items))

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset().union(*(it.needs for it in self.items))

    def apply(self, site: Site, layer: int, value: SiteValue, ctx: EditContext) -> SiteValue | None:
        changed = False
        for edit in self.edits:
            if site in edit.sites:
                new = edit.apply(site, layer, value, ctx)
                if new is not None:
                    value, changed = new, True
        return value if changed else None

    # -- checks --
    def _check_families(self, model: ModelView | None) -> None:
        for family, values in self.families().items():
            family.check_combination(values, model)

    def validate(self, model: ModelView) -> None:
        """Check every item and the combination against ``model`` (no forward pass)."""
        for it in self.items:
            it.validate(model)
        self._check_families(model)


def compose(*interventions: object) -> Plan:
    """One :class:`Plan` from interventions, plans, lists of them or ``None``s, in order."""
    flat: list[Intervention] = []

    def walk(x: object) -> None:
        if x is None:
            return
        if isinstance(x, Plan):
            flat.extend(x.items)
        elif isinstance(x, Intervention):
            flat.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        else:
            raise InvalidInputError(
                f"cannot compose {type(x).__name__}: expected an intervention, a plan or a list of them"
            )

    for x in interventions:
        walk(x)
    return Plan(tuple(flat))


def as_edits(interventions: object) -> list[Edit]:
    """Normalise ``None`` / one edit / a plan / a list to the flat list a pass runs.

    mechmoe's own interventions in a list are composed into one plan first, so a list
    means the same as ``a + b + …`` (routing values at one layer merge into one routing
    decision, and the combination is validated as a whole). Third-party edits run after
    them, in list order.
    """
    if interventions is None:
        return []
    if isinstance(interventions, (Intervention, Plan)):
        return list(interventions.edits)
    if hasattr(interventions, "edits") and not isinstance(interventions, (str, bytes, dict)):
        return list(interventions.edits)  # another composed plan type
    if isinstance(interventions, Edit):
        return [interventions]
    if not isinstance(interventions, Iterable) or isinstance(interventions, (str, bytes, dict)):
        raise InvalidTypeError(
            f"interventions= got a {type(interventions).__name__}: pass an intervention "
            "(e.g. ZeroExperts([(3, 12)])), a plan, or a list of them"
        )
    items = list(interventions)
    ours = [x for x in items if isinstance(x, (Intervention, Plan))]
    out: list[Edit] = as_edits(compose(*ours)) if ours else []
    for item in items:
        if not isinstance(item, (Intervention, Plan)):
            out.extend(as_edits(item))
    return out


__all__ = ["Intervention", "Plan", "as_edits", "compose"]
