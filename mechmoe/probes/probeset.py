"""Typed probe sets: relational prompts with a gold object each.

A :class:`ProbeSet` is an immutable tuple of :class:`ProbeItem` plus one
:class:`RelationMeta` per relation it contains. Selecting, filtering and combining
return new sets; nothing is mutated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from mechmoe.core.errors import InvalidInputError

#: Relation name reserved for the overall row of :func:`mechmoe.probes.summarize`.
ALL = "all"


#: Joins an item's gold objects in one string (the ``objects`` coordinate of results).
OBJECT_SEP = "|"


@dataclass(frozen=True)
class ProbeItem:
    """One probe: ``prompt`` is a template filled with ``subject``; ``objects`` are the gold answers.

    Attributes
    ----------
    relation
        Name of the relation, e.g. ``"country_capital_city"``.
    subject
        The subject that fills the template's ``{}``.
    object
        The first gold answer, as listed in the relation file.
    prompt
        The full prompt the model reads; the object is expected right after it.
    objects
        Every gold answer, ``object`` first, each once. A subject with several valid
        objects (the antonyms of one adjective, the people behind one superhero name)
        is one item whose gold answer is this set: HIT@k and MRR count the best-ranked
        of them. Only each object's first token is scored (see
        :func:`mechmoe.probes.first_token_ids`). Defaults to ``(object,)``.

    Examples
    --------
    >>> ProbeItem("adj_antonym", "open", "closed", "The opposite of open is",
    ...           objects=("closed", "shut")).objects
    ('closed', 'shut')
    >>> ProbeItem("r", "a", "x", "a is").objects
    ('x',)
    """

    relation: str
    subject: str
    object: str
    prompt: str
    objects: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        objs = tuple(dict.fromkeys((self.object, *tuple(self.objects))))
        for obj in objs:
            if not isinstance(obj, str):
                raise InvalidInputError(
                    f"subject {self.subject!r}: object {obj!r} is a {type(obj).__name__}, "
                    "not a string"
                )
            if OBJECT_SEP in obj:
                raise InvalidInputError(
                    f"subject {self.subject!r}: object {obj!r} contains {OBJECT_SEP!r}, which "
                    "joins an item's several objects in results; write the object without it"
                )
        object.__setattr__(self, "objects", objs)


@dataclass(frozen=True)
class RelationMeta:
    """What a relation file says about a relation besides its samples.

    Attributes
    ----------
    name
        Relation name (the LRE ``name`` key).
    relation_type
        ``properties.relation_type``: factual, commonsense, linguistic, bias, or
        ``"unknown"`` when the file does not say.
    templates
        The ``prompt_templates`` (few-shot style in LRE; each has one ``{}``).
    templates_zs
        The ``prompt_templates_zs`` (zero-shot); may be empty.
    template
        The template actually used to build this set's prompts.
    source
        The file the relation was read from, if any.
    notes
        What the loader changed while reading, one sentence each (e.g. exact duplicate
        ``(subject, object)`` pairs it collapsed, subjects it merged into one item with
        several objects). Empty when the file was read as written.
    """

    name: str
    relation_type: str
    templates: tuple[str, ...]
    templates_zs: tuple[str, ...] = ()
    template: str = ""
    source: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeSet:
    """An immutable, ordered set of probe items with per-relation metadata.

    Items with the same relation and subject may appear only once, and every item's
    relation must have a :class:`RelationMeta`.

    Examples
    --------
    >>> from mechmoe.probes import load_probe
    >>> probe = load_probe("adj_antonym")
    >>> len(probe) > 10, probe[0].prompt.endswith(" is")
    (True, True)
    >>> probe.head(2).subjects
    ('hot', 'big')
    """

    items: tuple[ProbeItem, ...]
    relations: tuple[RelationMeta, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        object.__setattr__(self, "relations", tuple(self.relations))
        names = [m.name for m in self.relations]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InvalidInputError(
                f"relation {dup[0]!r} appears more than once; give each relation file a unique name"
            )
        if ALL in names:
            raise InvalidInputError(
                f"relation name {ALL!r} is reserved for the overall summary row; rename the relation"
            )
        known = set(names)
        seen: set[tuple[str, str]] = set()
        for i, item in enumerate(self.items):
            if item.relation not in known:
                raise InvalidInputError(
                    f"item {i} (subject {item.subject!r}) has relation {item.relation!r}, "
                    "which has no RelationMeta in this set"
                )
            key = (item.relation, item.subject)
            if key in seen:
                raise InvalidInputError(
                    f"item {i}: subject {item.subject!r} appears twice in relation {item.relation!r}"
                )
            seen.add(key)

    # -- container protocol -------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ProbeItem]:
        return iter(self.items)

    def __getitem__(self, index: int) -> ProbeItem:
        return self.items[index]

    def __add__(self, other: ProbeSet) -> ProbeSet:
        if not isinstance(other, ProbeSet):
            return NotImplemented
        return ProbeSet(self.items + other.items, self.relations + other.relations)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}={c}" for n, c in self.counts().items())
        return f"ProbeSet({len(self)} items: {counts})"

    # -- views --------------------------------------------------------------------

    @property
    def relation_names(self) -> tuple[str, ...]:
        """Relation names in the order they were added."""
        return tuple(m.name for m in self.relations)

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(it.prompt for it in self.items)

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(it.subject for it in self.items)

    @property
    def objects(self) -> tuple[str, ...]:
        """Each item's first gold object (see :attr:`object_sets` for all of them)."""
        return tuple(it.object for it in self.items)

    @property
    def object_sets(self) -> tuple[tuple[str, ...], ...]:
        """Each item's gold objects, first listed first."""
        return tuple(it.objects for it in self.items)

    def meta(self, relation: str) -> RelationMeta:
        """The :class:`RelationMeta` of ``relation``."""
        for m in self.relations:
            if m.name == relation:
                return m
        raise InvalidInputError(
            f"no relation {relation!r} in this probe set; it has: {', '.join(self.relation_names)}"
        )

    def counts(self) -> dict[str, int]:
        """Number of items per relation, in relation order."""
        out = {name: 0 for name in self.relation_names}
        for it in self.items:
            out[it.relation] += 1
        return out

    # -- selection ----------------------------------------------------------------

    def select(self, relations: str | Iterable[str]) -> ProbeSet:
        """Keep only the given relation(s); unknown names raise :class:`InvalidInputError`."""
        wanted = [relations] if isinstance(relations, str) else list(relations)
        metas = tuple(self.meta(name) for name in wanted)
        keep = set(wanted)
        return ProbeSet(tuple(it for it in self.items if it.relation in keep), metas)

    def filter(self, predicate: Callable[[ProbeItem], bool]) -> ProbeSet:
        """Keep the items for which ``predicate(item)`` is true (relations are kept)."""
        return ProbeSet(tuple(it for it in self.items if predicate(it)), self.relations)

    def head(self, n: int, *, per_relation: bool = False) -> ProbeSet:
        """The first ``n`` items overall, or of every relation with ``per_relation=True``."""
        if n < 0:
            raise InvalidInputError(f"n must be non-negative, got {n}")
        if not per_relation:
            return ProbeSet(self.items[:n], self.relations)
        taken: dict[str, int] = {}
        keep = []
        for it in self.items:
            if taken.get(it.relation, 0) < n:
                taken[it.relation] = taken.get(it.relation, 0) + 1
                keep.append(it)
        return ProbeSet(tuple(keep), self.relations)


__all__ = ["ALL", "OBJECT_SEP", "ProbeItem", "ProbeSet", "RelationMeta"]
