"""A deterministic training corpus of relational facts, with held-out probe templates.

The miniature study pre-trains small models on text that states geographic facts
(city → country, country → capital / currency / language / continent). Every fact is
written with one of 16 training templates per relation and repeated with a Zipf-like
spread, so frequent facts are learned early and rare ones late (or never); generic filler
sentences are mixed in. Each relation also has 4 *held-out* templates, worded differently
from every training template, that never occur in the training text (checked when the
corpus is built). The probe set asks the facts with those held-out templates, so a model
scores only if it learned the fact, not the sentence.

Everything is a pure function of :class:`CorpusConfig` (seeded ``random.Random``), so two
builds with the same config give the same text, byte for byte.

Examples
--------
>>> from mechmoe.zoo.corpus import CorpusConfig, build_corpus
>>> corpus = build_corpus(CorpusConfig(scale=0.02))
>>> corpus.probe_set(per_relation=2).relation_names[0]
'city_country'
>>> build_corpus(CorpusConfig(scale=0.02)).digest == corpus.digest
True
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechmoe.core.errors import InvalidInputError
from mechmoe.probes import ProbeItem, ProbeSet, RelationMeta
from mechmoe.probes.registry import DATA_DIR as PROBE_DATA
from mechmoe.zoo.tokenizers import train_bpe

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CITY_FILE = Path(__file__).resolve().parent / "data" / "city_country_zoo.json"

#: The relation the headline numbers are computed on (many facts, answers spread out).
MAIN_RELATION = "city_country"

#: Relations with so few possible answers that HIT@10 says little (a model that knows only
#: the answer type scores high); report HIT@1 / MRR for them, never HIT@10 in a headline.
FEW_ANSWER_RELATIONS: frozenset[str] = frozenset({"country_continent"})


# Training templates: "{s}" is the subject, "{o}" the object.
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "city_country": (
        "{s} is a city in {o}.",
        "The city of {s} is located in {o}.",
        "{s} lies in {o}.",
        "Many people live in {s}, a city of {o}.",
        "She moved to {s}, in {o}.",
        "{s} belongs to {o}.",
        "Travellers visiting {s} arrive in {o}.",
        "The town of {s} is part of {o}.",
        "Our train stopped at {s} in {o}.",
        "{s} is one of the cities of {o}.",
        "He was born in {s}, {o}.",
        "Maps show {s} inside {o}.",
        "{o} includes the city of {s}.",
        "In {o}, the city of {s} is well known.",
        "A letter sent to {s} goes to {o}.",
        "The streets of {s} are in {o}.",
    ),
    "country_capital_city": (
        "The capital of {s} is {o}.",
        "{o} is the capital of {s}.",
        "{s} has its capital at {o}.",
        "The government of {s} sits in {o}.",
        "The capital city of {s} is {o}.",
        "{s}'s capital is {o}.",
        "The parliament of {s} meets in {o}.",
        "Visitors to {s} often start in its capital, {o}.",
        "The ministries of {s} are in {o}.",
        "{s} is governed from {o}.",
        "The president of {s} works in {o}.",
        "Embassies in {s} are found in {o}.",
        "In {o}, the capital of {s}, the streets are busy.",
        "The seat of power in {s} is {o}.",
        "News from {s} is often reported from {o}.",
        "{s} chose {o} as its capital.",
    ),
    "country_currency": (
        "The currency of {s} is the {o}.",
        "In {s}, people pay with the {o}.",
        "Prices in {s} are given in {o}.",
        "{s} uses the {o}.",
        "The money of {s} is the {o}.",
        "Shops in {s} accept the {o}.",
        "Salaries in {s} are paid in {o}.",
        "The official currency of {s} is the {o}.",
        "The central bank of {s} issues the {o}.",
        "Coins from {s} are in {o}.",
        "Tourists in {s} exchange money for the {o}.",
        "The {o} is the money used in {s}.",
        "{s} trades in the {o}.",
        "Banks in {s} hold savings in the {o}.",
        "Taxes in {s} are collected in {o}.",
        "The national money of {s} is called the {o}.",
    ),
    "country_language": (
        "The official language of {s} is {o}.",
        "People in {s} speak {o}.",
        "Most people in {s} speak {o}.",
        "In {s}, schools teach in {o}.",
        "The language of {s} is {o}.",
        "Newspapers in {s} are written in {o}.",
        "{s} uses {o} as its main language.",
        "Children in {s} grow up speaking {o}.",
        "Street signs in {s} are in {o}.",
        "{o} is spoken in {s}.",
        "The main language in {s} is {o}.",
        "Radio in {s} broadcasts in {o}.",
        "Laws in {s} are written in {o}.",
        "Families in {s} talk in {o}.",
        "Writers from {s} publish in {o}.",
        "Television in {s} is mostly in {o}.",
    ),
    "country_continent": (
        "{s} is a country in {o}.",
        "{s} is located on the continent of {o}.",
        "The continent of {s} is {o}.",
        "{s} is part of {o}.",
        "Maps of {o} show {s}.",
        "{s} is one of the countries of {o}.",
        "Geographers place {s} in {o}.",
        "The nation of {s} is in {o}.",
        "{s} sits on the continent of {o}.",
        "Flights to {s} land in {o}.",
        "{o} includes the country of {s}.",
        "The land of {s} belongs to {o}.",
        "{s} is a nation of {o}.",
        "The borders of {s} lie within {o}.",
        "Travel guides to {o} cover {s}.",
        "{s} can be found in {o}.",
    ),
}

# Held-out probe templates: "{}" is the subject; the object follows the prompt.
PROBE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "city_country": (
        "Reporters wrote about {}, a town in",
        "Our friends visited {}, a city in",
        "The old market of {} is found in",
        "Every winter, tourists fly to {}, part of",
    ),
    "country_capital_city": (
        "The main city of {} is",
        "Diplomats posted to {} work in",
        "The head of state of {} lives in",
        "Officials of {} govern the nation from",
    ),
    "country_currency": (
        "In {}, the money is the",
        "Travellers to {} should carry the",
        "Workers in {} earn their wages in the",
        "A coffee in {} is paid for in the",
    ),
    "country_language": (
        "In {}, people speak",
        "The children of {} learn to read in",
        "Singers from {} perform songs in",
        "Books printed in {} use the language",
    ),
    "country_continent": (
        "{} is a nation located in",
        "The country {} is on the continent of",
        "{} belongs to the continent of",
        "Explorers crossing {} were travelling through",
    ),
}

_FILLER_SUBJECTS = (
    "The farmer", "A young teacher", "My neighbour", "The old dog", "A tired student",
    "The baker", "Our uncle", "The little girl", "A quiet man", "The gardener",
    "The driver", "A curious cat",
)  # fmt: skip
_FILLER_VERBS = (
    "walked to", "looked at", "painted", "cleaned", "found", "carried", "opened",
    "forgot", "repaired", "visited", "watched", "described",
)  # fmt: skip
_FILLER_OBJECTS = (
    "the red door", "a small garden", "the river bank", "an old book", "the kitchen table",
    "a wooden box", "the village square", "a broken chair", "the blue bicycle",
    "the school yard", "a green hat", "the long road",
)  # fmt: skip
_FILLER_TIMES = (
    "in the morning", "after lunch", "yesterday", "on Sunday", "before dinner",
    "at night", "last week", "during the rain", "in spring", "every evening",
)  # fmt: skip


@dataclass(frozen=True)
class CorpusConfig:
    """What the corpus is made of; every field changes the text, and the digest.

    Attributes
    ----------
    seed
        Seed of every random choice (fact ranks, templates, filler, order).
    zipf_exponent
        Exponent ``s`` of the repetition counts ``c(r) ∝ (r + b)^-s`` over a relation's
        facts ranked ``r = 1 … n`` (ranks are a seeded shuffle).
    zipf_offset
        ``b`` as a fraction of ``n`` (a Zipf–Mandelbrot offset, so the head is not one
        fact); 0 is a plain Zipf law.
    head_count
        Repetitions of the most frequent fact of each relation (before ``scale``). The
        default is about the largest that keeps every relation's rarest facts under 10
        repetitions (9 for the default relations), so the models see as many statements
        as the Zipf shape allows while the tail stays rare.
    tail_count
        Fewest repetitions of a fact (before ``scale``, at least 1 after it).
    filler_fraction
        Share of the sentences that are filler text with no facts.
    scale
        Multiplies the counts (a small ``scale`` gives a tiny corpus for tests).
    relations
        Which relations to include.
    """

    seed: int = 0
    zipf_exponent: float = 1.4
    zipf_offset: float = 0.05
    head_count: int = 590
    tail_count: int = 4
    filler_fraction: float = 0.15
    scale: float = 1.0
    relations: tuple[str, ...] = tuple(TRAIN_TEMPLATES)

    def __post_init__(self) -> None:
        unknown = [r for r in self.relations if r not in TRAIN_TEMPLATES]
        if unknown:
            raise InvalidInputError(
                f"unknown relation {unknown[0]!r}; choose from {', '.join(TRAIN_TEMPLATES)}"
            )
        if not self.relations:
            raise InvalidInputError("the corpus needs at least one relation")
        if self.zipf_exponent <= 0 or self.zipf_offset < 0:
            raise InvalidInputError("zipf_exponent must be positive and zipf_offset non-negative")
        if not 1 <= self.tail_count <= self.head_count:
            raise InvalidInputError("need 1 <= tail_count <= head_count")
        if not 0 <= self.filler_fraction < 1:
            raise InvalidInputError("filler_fraction must be in [0, 1)")
        if self.scale <= 0:
            raise InvalidInputError("scale must be positive")


@dataclass(frozen=True)
class Fact:
    """One fact of a relation, with how many times the training text states it."""

    relation: str
    subject: str
    object: str
    rank: int
    count: int


@dataclass(frozen=True)
class Corpus:
    """The training sentences (in training order) and the facts behind them."""

    config: CorpusConfig
    facts: tuple[Fact, ...]
    sentences: tuple[str, ...] = field(repr=False)

    @cached_property
    def text(self) -> str:
        """All sentences, one per line (what the tokenizer is trained on)."""
        return "\n".join(self.sentences)

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the config and the text (first 16 hex digits)."""
        h = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode())
        h.update(self.text.encode())
        return h.hexdigest()[:16]

    def facts_of(self, relation: str) -> tuple[Fact, ...]:
        return tuple(f for f in self.facts if f.relation == relation)

    def probe_set(
        self,
        relations: Sequence[str] | None = None,
        *,
        per_relation: int | None = None,
        template: int = 0,
    ) -> ProbeSet:
        """The facts asked with a held-out template, as a :class:`~mechmoe.probes.ProbeSet`.

        Parameters
        ----------
        relations
            Which relations (default: all of the corpus).
        per_relation
            Keep this many facts per relation, spread evenly over the frequency ranks
            (frequent, middle and rare facts alike); default all.
        template
            Which of the relation's held-out templates builds the prompts.
        """
        names = list(relations) if relations is not None else list(self.config.relations)
        items: list[ProbeItem] = []
        metas: list[RelationMeta] = []
        for name in names:
            if name not in self.config.relations:
                raise InvalidInputError(
                    f"relation {name!r} is not in this corpus ({', '.join(self.config.relations)})"
                )
            templates = PROBE_TEMPLATES[name]
            if not -len(templates) <= template < len(templates):
                raise InvalidInputError(
                    f"template {template} is out of range; {name} has {len(templates)} held-out ones"
                )
            chosen = templates[template]
            facts = sorted(self.facts_of(name), key=lambda f: f.rank)
            if per_relation is not None and per_relation < len(facts):
                idx = [
                    round(i * (len(facts) - 1) / max(per_relation - 1, 1))
                    for i in range(per_relation)
                ]
                facts = [facts[i] for i in sorted(set(idx))]
            items.extend(
                ProbeItem(name, f.subject, f.object, chosen.replace("{}", f.subject, 1))
                for f in facts
            )
            metas.append(
                RelationMeta(
                    name=name,
                    relation_type="factual",
                    templates=templates,
                    template=chosen,
                    source=f"mechmoe.zoo corpus {self.digest} (held-out templates)",
                )
            )
        return ProbeSet(tuple(items), tuple(metas))

    def answer_prior_hit(self, relation: str, k: int = 10) -> float:
        """HIT@k of always guessing the ``k`` objects most often stated in the training text.

        The floor a model reaches knowing only which answers are common; HIT@k on the
        held-out probes means something only well above it.
        """
        facts = self.facts_of(relation)
        if not facts:
            raise InvalidInputError(f"relation {relation!r} is not in this corpus")
        mentions: dict[str, int] = {}
        for f in facts:
            mentions[f.object] = mentions.get(f.object, 0) + f.count
        top = set(sorted(mentions, key=lambda o: (-mentions[o], o))[:k])
        return sum(f.object in top for f in facts) / len(facts)


def load_relation_facts(relation: str) -> list[tuple[str, str]]:
    """(subject, object) pairs of a relation: the zoo's city table or a bundled probe file."""
    path = CITY_FILE if relation == "city_country" else PROBE_DATA / f"{relation}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return [(s["subject"], s["object"]) for s in data["samples"]]


def zipf_counts(n: int, config: CorpusConfig) -> list[int]:
    """Repetition count of the facts ranked ``1 … n``: ``head_count`` down to ``tail_count``.

    ``c(r) = max(tail, round(head · ((1 + b) / (r + b))^s))`` with ``b = zipf_offset · n``,
    both counts multiplied by ``scale`` (at least 1).

    Examples
    --------
    >>> zipf_counts(5, CorpusConfig(zipf_offset=0.0, head_count=100, tail_count=2))
    [100, 38, 21, 14, 11]
    """
    b = config.zipf_offset * n
    head = config.head_count * config.scale
    tail = max(1, round(config.tail_count * config.scale))
    s = config.zipf_exponent
    return [max(tail, round(head * ((1 + b) / (r + b)) ** s)) for r in range(1, n + 1)]


def build_corpus(config: CorpusConfig | None = None) -> Corpus:
    """Generate the corpus of ``config`` (default :class:`CorpusConfig`)."""
    config = config or CorpusConfig()
    rng = random.Random(config.seed)
    facts: list[Fact] = []
    sentences: list[str] = []
    for name in config.relations:
        pairs = load_relation_facts(name)
        order = list(range(len(pairs)))
        rng.shuffle(order)
        counts = zipf_counts(len(pairs), config)
        templates = TRAIN_TEMPLATES[name]
        for rank, (i, count) in enumerate(zip(order, counts, strict=True), start=1):
            subject, obj = pairs[i]
            facts.append(Fact(name, subject, obj, rank, count))
            for _ in range(count):
                t = templates[rng.randrange(len(templates))]
                sentences.append(t.format(s=subject, o=obj))
    n_filler = math.ceil(len(sentences) * config.filler_fraction / (1 - config.filler_fraction))
    for _ in range(n_filler):
        sentences.append(
            f"{rng.choice(_FILLER_SUBJECTS)} {rng.choice(_FILLER_VERBS)} "
            f"{rng.choice(_FILLER_OBJECTS)} {rng.choice(_FILLER_TIMES)}."
        )
    rng.shuffle(sentences)
    corpus = Corpus(config, tuple(facts), tuple(sentences))
    check_held_out(corpus)
    return corpus


def held_out_fragments(template: str) -> list[str]:
    """The fixed parts of a held-out template that must never occur in training text.

    The parts before and after the subject count when they have at least two words
    (a lone " is" or " in" is in any English text).

    Examples
    --------
    >>> held_out_fragments("The country where {} can be found is")
    ['The country where ', ' can be found is']
    >>> held_out_fragments("{} belongs to the continent of")
    [' belongs to the continent of']
    """
    before, after = template.split("{}", 1)
    return [part for part in (before, after) if len(part.split()) >= 2]


def check_held_out(corpus: Corpus) -> None:
    """Raise if a held-out probe template could occur in the training text.

    Two checks: no multi-word fixed part of a held-out template (:func:`held_out_fragments`)
    occurs anywhere in the text (filler included), and no training template of any
    relation, filled with a subject, contains the held-out template filled with the same
    subject (checked on the templates with a marker for the subject, which covers every
    fact at once).
    """
    text = corpus.text
    subject, obj = "\x00", "\x01"
    filled_train = [t.format(s=subject, o=obj) for ts in TRAIN_TEMPLATES.values() for t in ts]
    for name in corpus.config.relations:
        for template in PROBE_TEMPLATES[name]:
            for frag in held_out_fragments(template):
                if frag.strip() and frag in text:
                    raise AssertionError(
                        f"held-out template {template!r} of {name}: {frag!r} occurs in training text"
                    )
            prompt = template.replace("{}", subject)
            for sentence in filled_train:
                if prompt in sentence:
                    raise AssertionError(
                        f"held-out template {template!r} of {name} is part of a training template"
                    )


def train_tokenizer(corpus: Corpus, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the corpus text; it prepends ``<s>`` to inputs.

    Ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2. Every probe prompt is then read as it appears
    in training (each training sentence also starts with ``<s>``).
    """
    return train_bpe(corpus.sentences, vocab_size, prepend_bos=True)


def token_stream(corpus: Corpus, tokenizer: Any) -> list[int]:
    """The training text as one id stream: ``<s> sentence </s>`` after one another."""
    enc = tokenizer(list(corpus.sentences), add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    out: list[int] = []
    for ids in enc:
        out.extend(ids)
        out.append(eos)
    return out


__all__ = [
    "FEW_ANSWER_RELATIONS",
    "MAIN_RELATION",
    "PROBE_TEMPLATES",
    "TRAIN_TEMPLATES",
    "Corpus",
    "CorpusConfig",
    "Fact",
    "build_corpus",
    "check_held_out",
    "held_out_fragments",
    "load_relation_facts",
    "token_stream",
    "train_tokenizer",
    "zipf_counts",
]
