"""The one progress mechanism: silent by default, reporters, nesting, CLI rendering."""

from __future__ import annotations

import io
import threading

import pytest
from rich.console import Console

from mechmoe.core import progress
from mechmoe.core.progress import PlainReporter, Recorder, RichReporter, reporting, task


def test_silent_without_a_reporter(capsys):
    assert not progress.active()
    with task("work", total=3) as bar:
        bar.advance()
        bar.update(description="renamed", total=4)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_recorder_sees_nested_tasks_in_order():
    with reporting(Recorder()) as rec:
        assert progress.active()
        with task("outer", total=2) as outer:
            with task("inner", total=3) as inner:
                inner.advance(2)
                inner.update(description="inner!")
                inner.advance()
            outer.advance(2)
    assert not progress.active()
    kinds = [(e.kind, e.description, e.completed, e.depth) for e in rec.events]
    assert kinds == [
        ("start", "outer", 0.0, 0),
        ("start", "inner", 0.0, 1),
        ("advance", "inner", 2.0, 1),
        ("update", "inner!", 2.0, 1),
        ("advance", "inner!", 3.0, 1),
        ("finish", "inner!", 3.0, 1),
        ("advance", "outer", 2.0, 0),
        ("finish", "outer", 2.0, 0),
    ]
    outer_id = rec.events[0].id
    assert all(e.id != outer_id for e in rec.events if e.description.startswith("inner"))


def test_show_false_is_silent_even_under_a_reporter_and_finish_on_error():
    with reporting(Recorder()) as rec:
        with task("hidden", total=1, show=False) as bar:
            bar.advance()
        with pytest.raises(RuntimeError):
            with task("fails", total=5) as bar:
                bar.advance()
                raise RuntimeError("boom")
    assert [e.kind for e in rec.events] == ["start", "advance", "finish"]
    assert {e.description for e in rec.events} == {"fails"}


def test_show_true_without_a_reporter_renders_on_stderr(capsys, monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    with task("visible", total=2, show=True) as bar:
        bar.advance(2)
    err = capsys.readouterr().err
    assert "visible: 2/2 (100%)" in err and "visible: done 2 in" in err


def test_innermost_reporter_wins_and_threads_report_too():
    with reporting(Recorder()) as outer:
        with reporting(Recorder()) as inner:

            def work() -> None:
                with task("thread", total=1) as bar:
                    bar.advance()

            t = threading.Thread(target=work)
            t.start()
            t.join()
    assert outer.events == []
    assert [e.kind for e in inner.events] == ["start", "advance", "finish"]
    assert inner.events[0].depth == 0


def test_plain_reporter_lines_with_interval():
    lines: list[str] = []
    with reporting(PlainReporter(lines.append, interval=0)):
        with task("steps", total=4) as bar:
            for _ in range(4):
                bar.advance()
            with task("sub") as sub:
                sub.advance(1.5)
    assert lines[0].startswith("steps: 1/4 (25%), 0:00:00, ETA ")
    assert lines[3].startswith("steps: 4/4 (100%)")
    assert lines[4].startswith("  sub: 1.5, ")  # no total: no percentage or ETA
    assert "ETA" not in lines[4]
    assert lines[5].startswith("  sub: done 1.5 in")
    assert lines[6].startswith("steps: done 4 in")
    assert len(lines) == 7

    lines.clear()
    with reporting(PlainReporter(lines.append, interval=0)):
        with pytest.raises(KeyError):
            with task("fails", total=3) as bar:
                bar.advance()
                raise KeyError("x")
    assert lines[-1].startswith("fails: stopped at 1/3 after ")

    # tasks shorter than the interval print nothing (quick commands stay quiet)
    quiet: list[str] = []
    with reporting(PlainReporter(quiet.append, interval=3600)):
        with task("steps", total=100) as bar:
            for _ in range(100):
                bar.advance()
    assert quiet == []


def test_rich_reporter_draws_bars_and_stops_between_tasks():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    reporter = progress.reporter_for(console)
    assert isinstance(reporter, RichReporter)
    with reporting(reporter):
        with task("loading", total=3) as bar:
            bar.advance(3)
            assert reporter._progress is not None
            reporter._progress.refresh()
        assert reporter._progress is None  # display stopped: command output is not drawn over
    out = buf.getvalue()
    assert "loading" in out and "3/3" in out


def test_reporter_for_a_non_terminal_is_plain():
    buf = io.StringIO()
    reporter = progress.reporter_for(Console(file=buf, force_terminal=False))
    assert isinstance(reporter, PlainReporter)


def test_ops_report_through_the_mechanism():
    from mechmoe.ops.attribution import attribute
    from mechmoe.testing import tiny_model

    model = tiny_model("llama")
    with reporting(Recorder()) as rec:
        attribute(model, ["a b c", "The capital of France is"], level="ffn", batch_size=1)
        attribute(model, ["a b c"], level="ffn", progress=True)
    finishes = [e for e in rec.events if e.kind == "finish"]
    assert len(finishes) == 1  # progress=False (the default) stays silent
    # one batch and one step per layer
    assert finishes[0].description == "attribute ffn"
    assert finishes[0].completed == finishes[0].total == 1 + model.dims.n_layers


def test_cli_renders_plain_lines_when_not_a_terminal(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mechmoe.cli import app

    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    prompts = tmp_path / "p.txt"
    prompts.write_text("The capital of France is\nThe opposite of hot is\n")
    result = CliRunner().invoke(
        app,
        ["attribute", "tiny:llama", "--prompts", str(prompts), "--level", "ffn", "--top", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "attribute ffn: 3/3 (100%)" in result.stderr
    assert "attribute ffn: done 3 in" in result.stderr
