"""The documentation site: generated pages match the code and the site builds strictly
(tests/docs/test_docs_run.py runs what the pages show)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _pages_module():
    return runpy.run_path(str(ROOT / "scripts" / "docs_pages.py"), run_name="docs_pages")


def test_generated_pages_match_the_code():
    pages = _pages_module()
    stale = [
        rel
        for rel, make in pages["PAGES"].items()
        if (DOCS / rel).read_text(encoding="utf-8") != make()
    ]
    assert not stale, f"run python scripts/docs_pages.py: {stale} differ from the code"


def test_the_check_fails_on_a_drifted_page(tmp_path, monkeypatch):
    pages = _pages_module()
    page = tmp_path / "reference" / "measures.md"
    page.parent.mkdir()
    page.write_text(pages["measures_page"]().replace("`hit`", "`hits`"), encoding="utf-8")
    main = pages["main"]
    monkeypatch.setitem(main.__globals__, "DOCS", tmp_path)
    monkeypatch.setitem(
        main.__globals__, "PAGES", {"reference/measures.md": pages["measures_page"]}
    )
    assert main(["--check"]) == 1
    assert main([]) == 0 and main(["--check"]) == 0


def test_every_public_name_is_on_the_api_page():
    import mechmoe

    text = (DOCS / "reference" / "api.md").read_text(encoding="utf-8")
    pages = _pages_module()
    for name in set(mechmoe.__all__) - pages["API_DEPRECATED"]:
        obj = getattr(mechmoe, name)
        assert f"::: {obj.__module__}.{obj.__qualname__}\n" in text, name


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert [p for p in pages if f": {p}" not in nav] == []


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "LoadOptions" in api and "Parameters" in api
