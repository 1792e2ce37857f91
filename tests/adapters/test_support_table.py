"""The support table in docs/adapters.md is generated from the registry and cannot drift;
``mechmoe adapters list`` shows the same rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechmoe.adapters import get_adapter, list_adapters
from mechmoe.adapters.registry import NOT_EXPRESSIBLE
from mechmoe.cli import app
from mechmoe.core.errors import UnsupportedArchitectureError
from mechmoe.zoo.support import support_markdown, support_rows

DOC = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"
START, END = "<!-- support-table:start -->\n", "<!-- support-table:end -->"


def _doc_table() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text[text.index(START) + len(START) : text.index(END)]


def test_the_docs_table_is_the_generated_one():
    assert _doc_table() == support_markdown(), (
        "docs/adapters.md's support table is stale: paste `mechmoe adapters list --markdown` "
        "between its support-table markers"
    )


def test_every_registered_family_has_a_row_and_the_cli_prints_the_same():
    rows = support_rows()
    assert [r.architecture for r in rows] == list_adapters()
    result = CliRunner().invoke(app, ["adapters", "list", "--markdown"])
    assert result.exit_code == 0, result.output
    assert result.output == support_markdown()
    wide = CliRunner().invoke(app, ["adapters", "list"], env={"COLUMNS": "400"})
    assert wide.exit_code == 0, wide.output
    for row in rows:
        assert row.architecture in wide.output
    assert "DbrxForCausalLM" in wide.output


@pytest.mark.parametrize("architecture", sorted(NOT_EXPRESSIBLE))
def test_families_the_description_cannot_state_are_refused_with_what_is_missing(architecture):
    with pytest.raises(UnsupportedArchitectureError, match="the description") as err:
        get_adapter(architecture)
    assert "\n" not in str(err.value)
