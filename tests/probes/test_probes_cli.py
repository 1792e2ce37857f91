from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from mechmoe.cli import app
from mechmoe.probes import list_probes, load_probe

runner = CliRunner()


def cells(output: str) -> list[list[str]]:
    """The body rows of rich tables in ``output``, as stripped cells."""
    return [
        [c.strip() for c in ln.split("│")[1:-1]] for ln in output.splitlines() if ln.startswith("│")
    ]


def test_list() -> None:
    result = runner.invoke(app, ["probes", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {row[0]: row for row in cells(result.output) if row and row[0]}
    assert sorted(rows) == sorted(list_probes())
    for name in list_probes():
        probe = load_probe(name)
        first = probe[0]
        assert rows[name][1:3] == [probe.meta(name).relation_type, str(len(probe))]
        assert rows[name][3] == f"{first.prompt} → {first.object}"


def test_show() -> None:
    result = runner.invoke(
        app, ["probes", "show", "noun_plural", "--n", "3"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    probe = load_probe("noun_plural")
    expected = [[str(i), it.subject, it.object, it.prompt] for i, it in enumerate(probe.head(3))]
    assert cells(result.output) == expected
    assert f"noun_plural ({probe.meta('noun_plural').relation_type}, {len(probe)} items)" in (
        result.output
    )


def test_show_rejects_negative_template() -> None:
    result = runner.invoke(app, ["probes", "show", "noun_plural", "--template", "-1"])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "template index -1 is negative" in lines[0], result.output


def test_show_path(tmp_path: Path) -> None:
    rel = {
        "name": "toy",
        "prompt_templates": ["{} says"],
        "samples": [{"subject": "cow", "object": "moo"}],
    }
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(rel))
    result = runner.invoke(app, ["probes", "show", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "cow says" in result.output


def test_user_error_is_one_line_exit_2() -> None:
    result = runner.invoke(app, ["probes", "show", "noun_plurals"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "did you mean 'noun_plural'" in result.output
    assert "Traceback" not in result.output


def test_build(tmp_path: Path) -> None:
    result = runner.invoke(app, ["probes", "build", "--out", str(tmp_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    # hidden files (the writer's marker of a mechmoe output) are not relations
    built = sorted(p.stem for p in tmp_path.glob("*.json") if not p.name.startswith("."))
    assert built == list(list_probes())
