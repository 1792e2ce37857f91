"""Prompt files (:func:`mechmoe.probes.read_prompts`): the one reader of every ``--prompts``.

The refusals a user meets on the command line are rows of the bad-input table
(tests/test_bad_inputs.py); here the exact wording, the accepted forms, and that every
command reads the same file the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechmoe.core.errors import InvalidInputError
from mechmoe.probes import load_probe, read_prompts
from mechmoe.probes.prompt_file import MAX_BYTES

RELATION = {
    "name": "capitals",
    "prompt_templates": ["The capital of {} is", "{}'s capital is"],
    "properties": {"relation_type": "factual"},
    "samples": [
        {"subject": "France", "object": "Paris"},
        {"subject": "Japan", "object": "Tokyo"},
        {"subject": "France", "object": "Paris (city)"},
    ],
}


def test_gold_line_messages_name_the_line_exactly(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a is\tb\nc is\td\ne is\n", encoding="utf-8")
    with pytest.raises(InvalidInputError) as info:
        read_prompts(path)
    assert str(info.value) == (
        f"line 3 of {str(path)!r} has no gold object, but line 1 has one; write "
        "prompt<TAB>object on every line, or no objects at all"
    )
    path.write_text("a is\nc is\n", encoding="utf-8")
    pf = read_prompts(path)
    assert pf.prompts == ("a is", "c is") and pf.objects is None and pf.probe is None
    path.write_text("\ufeffa is\tb\nc is\td\n", encoding="utf-8")  # a BOM is not text
    pf = read_prompts(path)
    assert pf.prompts == ("a is", "c is") and pf.objects == (("b",), ("d",))


@pytest.mark.parametrize("inside", ["\u2028", "\u0085", "\x0c", "\x1c", "\u2029", "\r"])
def test_lines_end_at_newline_only(tmp_path: Path, inside: str) -> None:
    """str.splitlines would make two prompts of each of these lines."""
    path = tmp_path / "p.txt"
    path.write_bytes(f"one{inside}two\nthree\r\nfour\n".encode())
    assert read_prompts(path).prompts == (f"one{inside}two", "three", "four")


def test_prompts_keep_their_spaces_and_trailing_blank_lines_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text(" The capital of France is \n\n  \n", encoding="utf-8")
    assert read_prompts(path).prompts == (" The capital of France is ",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "has no prompts"),
        (b"\n \n", "has no prompts"),
        (b"one\n\nthree\n", "line 2 of .* is an empty prompt"),
        (b"caf\xe9\n", "is not UTF-8 text"),
        (b"one\x00two\n", "holds NUL bytes"),
        (b"a\tb\tc\n", "line 1 of .* has more than one TAB"),
        (b"a\t \n", "has a TAB but no object after it"),
    ],
)
def test_bad_text_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        read_prompts(path)


def test_missing_folder_huge_and_endless_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(InvalidInputError, match="is a folder"):
        read_prompts(tmp_path)
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as fh:  # sparse: no disk is used
        fh.truncate(MAX_BYTES + 1)
    with pytest.raises(InvalidInputError, match="is larger than 64 MiB"):
        read_prompts(huge)
    if Path("/dev/zero").exists():  # endless: read at most MAX_BYTES + 1 bytes, then refused
        with pytest.raises(InvalidInputError, match="is larger than 64 MiB .or never ends."):
            read_prompts("/dev/zero")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_is_read(tmp_path: Path) -> None:
    """``--prompts <(head -2 prompts.txt)``: the shell hands over a pipe, not a file."""
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as fh:
            fh.write(b"first prompt\nsecond prompt\n")

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        assert read_prompts(fifo).prompts == ("first prompt", "second prompt")
    finally:
        writer.join(timeout=10)


@pytest.mark.parametrize("name", ["rel.json", "rel.JSON", "rel.Json"])
def test_a_relation_file_in_any_case(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(json.dumps(RELATION), encoding="utf-8")
    pf = read_prompts(path, template=1)
    probe = load_probe(str(path), template=1)
    assert pf.is_relation and pf.prompts == probe.prompts == (
        "France's capital is",
        "Japan's capital is",
    )
    assert pf.objects == (("Paris", "Paris (city)"), ("Tokyo",))
    assert pf.head(1).prompts == ("France's capital is",) and len(pf.head(1).probe) == 1


def test_a_relation_nested_too_deeply_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(InvalidInputError, match="nested too deeply"):
        read_prompts(path)


def test_folders_of_relations_find_upper_case_suffixes(tmp_path: Path) -> None:
    (tmp_path / "CAPITALS.JSON").write_text(json.dumps(RELATION), encoding="utf-8")
    assert load_probe(str(tmp_path)).relation_names == ("capitals",)


def test_every_command_reads_the_same_prompts(tmp_path: Path, monkeypatch) -> None:
    """attribute, route and adapters check hand the model the prompts read_prompts reads."""
    import mechmoe.model
    from mechmoe.cli import app

    path = tmp_path / "p.txt"
    path.write_bytes("The capital\u2028of France is\nTokyo is a city in\n".encode())
    expected = list(read_prompts(path).prompts)
    seen: list[list[str]] = []
    real = mechmoe.model.load

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        capture = model.capture

        def recording(prompts, *a, **k):
            if isinstance(prompts, (list, tuple)):  # not a Batch made by check_model
                seen.append(list(prompts))
            return capture(prompts, *a, **k)

        model.capture = recording  # type: ignore[method-assign]
        return model

    monkeypatch.setattr(mechmoe.model, "load", spy)
    runner = CliRunner()
    for args in (
        ["attribute", "tiny:olmoe", "--prompts", str(path), "--level", "attn"],
        ["route", "tiny:olmoe", "--ban", "0:1", "--prompts", str(path)],
    ):
        seen.clear()
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert seen and all(batch == expected for batch in seen), (args, seen)

    import mechmoe.cli.adapters

    checked: list[list[str]] = []
    real_check = mechmoe.cli.adapters.check_model

    def check_spy(model, prompts, **kwargs):
        checked.append(list(prompts))
        return real_check(model, prompts, **kwargs)

    monkeypatch.setattr(mechmoe.cli.adapters, "check_model", check_spy)
    res = runner.invoke(app, ["adapters", "check", "tiny:olmoe", "--prompts", str(path)])
    assert res.exit_code == 0, res.output
    assert checked == [expected]
