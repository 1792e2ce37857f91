"""Gold-object prompt files (``prompt<TAB>object`` lines) for ``mechmoe attribute``.

The refusals themselves are rows of the bad-input table (tests/test_bad_inputs.py); here
the exact wording and the accepted forms.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mechmoe.core.errors import InvalidInputError


def test_gold_line_messages_name_the_line_exactly(tmp_path: Path) -> None:
    from mechmoe.cli.attribute import read_prompts

    path = tmp_path / "p.txt"
    path.write_text("a is\tb\nc is\td\ne is\n", encoding="utf-8")
    with pytest.raises(InvalidInputError) as info:
        read_prompts(path)
    assert str(info.value) == (
        f"line 3 of {str(path)!r} has no gold object, but line 1 has one; write "
        "prompt<TAB>object on every line, or no objects at all"
    )
    path.write_text("a is\nc is\n", encoding="utf-8")
    assert read_prompts(path) == (["a is", "c is"], None)
    path.write_text("\ufeffa is\tb\nc is\td\n", encoding="utf-8")  # a BOM is not text
    assert read_prompts(path) == (["a is", "c is"], [("b",), ("d",)])
