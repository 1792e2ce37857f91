"""Hand-written linguistic relations (written for mechmoe; no external source).

Subjects are common English words, chosen so the object is unambiguous for a
competent speaker. Order here is the order of the bundled file.
"""

from __future__ import annotations

ADJ_ANTONYM: tuple[tuple[str, str], ...] = (
    ("hot", "cold"),
    ("big", "small"),
    ("tall", "short"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("young", "old"),
    ("early", "late"),
    ("wet", "dry"),
    ("hard", "soft"),
    ("heavy", "light"),
    ("loud", "quiet"),
    ("clean", "dirty"),
    ("full", "empty"),
    ("thick", "thin"),
    ("wide", "narrow"),
    ("deep", "shallow"),
    ("cheap", "expensive"),
    ("true", "false"),
    ("open", "closed"),
    ("safe", "dangerous"),
    ("sweet", "sour"),
    ("brave", "cowardly"),
    ("ancient", "modern"),
    ("correct", "incorrect"),
    ("possible", "impossible"),
    ("visible", "invisible"),
    ("friendly", "hostile"),
    ("alive", "dead"),
    ("beautiful", "ugly"),
    ("polite", "rude"),
    ("near", "far"),
    ("upper", "lower"),
    ("inner", "outer"),
    ("maximum", "minimum"),
    ("private", "public"),
    ("positive", "negative"),
    ("major", "minor"),
    ("generous", "stingy"),
    ("smooth", "rough"),
)

WORD_FIRST_LETTER: tuple[str, ...] = (
    "apple",
    "banana",
    "cherry",
    "dolphin",
    "elephant",
    "forest",
    "guitar",
    "harbor",
    "island",
    "jungle",
    "kettle",
    "lemon",
    "mountain",
    "number",
    "orange",
    "pencil",
    "queen",
    "river",
    "summer",
    "table",
    "umbrella",
    "valley",
    "window",
    "yellow",
    "zebra",
    "bridge",
    "candle",
    "desert",
    "engine",
    "feather",
    "garden",
    "hammer",
    "jacket",
    "ladder",
    "market",
    "needle",
    "ocean",
    "planet",
    "rabbit",
    "silver",
    "tiger",
    "wizard",
)

NOUN_PLURAL: tuple[tuple[str, str], ...] = (
    ("cat", "cats"),
    ("dog", "dogs"),
    ("house", "houses"),
    ("car", "cars"),
    ("tree", "trees"),
    ("book", "books"),
    ("box", "boxes"),
    ("bus", "buses"),
    ("church", "churches"),
    ("dish", "dishes"),
    ("city", "cities"),
    ("baby", "babies"),
    ("story", "stories"),
    ("key", "keys"),
    ("day", "days"),
    ("hero", "heroes"),
    ("potato", "potatoes"),
    ("knife", "knives"),
    ("wolf", "wolves"),
    ("leaf", "leaves"),
    ("life", "lives"),
    ("roof", "roofs"),
    ("man", "men"),
    ("woman", "women"),
    ("child", "children"),
    ("person", "people"),
    ("mouse", "mice"),
    ("goose", "geese"),
    ("tooth", "teeth"),
    ("foot", "feet"),
    ("ox", "oxen"),
    ("sheep", "sheep"),
    ("fish", "fish"),
    ("deer", "deer"),
    ("cactus", "cacti"),
    ("crisis", "crises"),
    ("analysis", "analyses"),
    ("phenomenon", "phenomena"),
    ("criterion", "criteria"),
    ("index", "indices"),
    ("louse", "lice"),
    ("die", "dice"),
)


def adj_antonym() -> dict[str, object]:
    return _relation(
        "adj_antonym",
        ["The opposite of {} is", "{} is the opposite of"],
        ["What is the opposite of {}? The opposite is"],
        "adjective",
        "antonym",
        ADJ_ANTONYM,
        symmetric=True,
    )


def word_first_letter() -> dict[str, object]:
    pairs = tuple((w, w[0]) for w in WORD_FIRST_LETTER)
    return _relation(
        "word_first_letter",
        ["The first letter of the word {} is", "The word {} begins with the letter"],
        ["What letter does the word {} start with? It starts with"],
        "word",
        "letter",
        pairs,
    )


def noun_plural() -> dict[str, object]:
    return _relation(
        "noun_plural",
        ["The plural of {} is", "One {}, two"],
        ["What is the plural form of the word {}? The plural is"],
        "noun",
        "plural noun",
        NOUN_PLURAL,
    )


def _relation(
    name: str,
    templates: list[str],
    templates_zs: list[str],
    domain: str,
    range_: str,
    pairs: tuple[tuple[str, str], ...],
    *,
    symmetric: bool = False,
) -> dict[str, object]:
    return {
        "name": name,
        "prompt_templates": templates,
        "prompt_templates_zs": templates_zs,
        "properties": {
            "relation_type": "linguistic",
            "domain_name": domain,
            "range_name": range_,
            "symmetric": symmetric,
            "source": "hand-written for mechmoe",
        },
        "samples": [{"subject": s, "object": o} for s, o in pairs],
    }


LINGUISTIC = (adj_antonym, word_first_letter, noun_plural)
