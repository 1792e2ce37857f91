"""Docs that run: every Python block of every page runs, in page order, one namespace
per page, in an empty folder; every ``mechmoe`` command a page shows on a built-in tiny
model runs. A block or command that cannot run here (a hub model, a user's own file) is
preceded by ``<!-- not run: REASON -->``, which says why."""

from __future__ import annotations

import re
import shlex
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(
    r"(<!-- not run: (?P<reason>[^>]*?) -->\s*\n)?```(?P<lang>\w+)\n(?P<code>.*?)```", re.S
)


def _blocks(page: Path, lang: str) -> list[tuple[str, str | None]]:
    text = page.read_text(encoding="utf-8")
    return [(m["code"], m["reason"]) for m in BLOCK.finditer(text) if m["lang"] == lang]


PAGES = sorted(p for p in DOCS.rglob("*.md") if _blocks(p, "python"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_python_blocks_run(page, tmp_path, monkeypatch):
    from mechmoe.adapters.registry import ADAPTERS
    from mechmoe.backends.base import BACKENDS
    from mechmoe.model.sources import SOURCES
    from mechmoe.trajectory.measures import MEASURES

    # what a page registers (an example measure, backend or family) is removed after it
    for registry in (ADAPTERS, BACKENDS, SOURCES, MEASURES):
        monkeypatch.setattr(registry, "_registered", dict(registry._registered))
    monkeypatch.chdir(tmp_path)
    # a real module, so dataclasses and protocols defined on the page work as in a script
    module = types.ModuleType("docs_page")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for i, (code, reason) in enumerate(_blocks(page, "python")):
        if reason is not None:
            assert reason.strip(), f"{page.name} block {i}: say why it is not run"
            continue
        exec(compile(code, f"{page.name}[python block {i}]", "exec"), module.__dict__)


def _commands() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for code, reason in _blocks(page, "bash"):
            if reason is not None:
                continue
            for line in code.splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith("mechmoe ") and "tiny:" in line:
                    found.append((page.relative_to(DOCS).as_posix(), line))
    return found


@pytest.mark.parametrize("page, line", _commands(), ids=[f"{p}:{c}" for p, c in _commands()])
def test_commands_on_tiny_models_run(page, line, tmp_path, monkeypatch):
    from mechmoe.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, shlex.split(line)[1:])
    assert result.exit_code == 0, f"{page}: {line}\n{result.output}"
