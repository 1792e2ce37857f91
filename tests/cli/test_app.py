"""The app itself: its command table, lazy loading, the load-option group, the layout rules.

How each command computes is tested beside it (test_*_cli.py); here what every command
shares: ``mechmoe --help`` imports no command and no torch, every ``--help`` works, the
table agrees with the commands, one declaration gives every model-loading command every
load option (and they reach ``load``), and command modules import at the top and only
public names of other packages.
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mechmoe.cli
from mechmoe.cli import COMMANDS, app, load_command
from mechmoe.cli._loading import LOAD_OPTIONS
from mechmoe.model import LoadOptions

runner = CliRunner()
CLI = Path(mechmoe.cli.__file__).parent


def _leaves():
    """Every runnable command as (words, click command), groups expanded."""
    for name in COMMANDS:
        cmd = load_command(name)
        subs = getattr(cmd, "commands", None)
        if subs:
            for sub, leaf in subs.items():
                yield (name, sub), leaf
        else:
            yield (name,), cmd


def test_help_imports_no_command_and_no_torch():
    code = (
        "import sys\n"
        "from mechmoe.cli import main\n"
        "sys.argv = ['mechmoe', '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = ['torch', 'numpy', 'transformers', 'nnsight', 'xarray']\n"
        "cmds = [m for m in sys.modules if m.startswith('mechmoe.cli.') and m != 'mechmoe.cli._common']\n"
        "print('LOADED', sorted(m for m in heavy if m in sys.modules), sorted(cmds))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    assert "LOADED [] []" in run.stdout, run.stdout[-500:]
    for name, (_, summary) in COMMANDS.items():  # every command listed with its summary
        assert f"{name} " in run.stdout and summary[:40] in run.stdout, name


def test_table_summary_is_each_commands_own_first_line():
    for name, (_, summary) in COMMANDS.items():
        cmd = load_command(name)
        first = " ".join((cmd.help or "").split("\n\n")[0].split())
        assert first == summary, (name, first, summary)


@pytest.mark.parametrize("words", [w for w, _ in _leaves()], ids=" ".join)
def test_every_commands_help_works(words):
    res = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert f"Usage: mechmoe {' '.join(words)}" in res.output


def test_unknown_command_suggests_the_close_one():
    res = runner.invoke(app, ["atribute"])
    assert res.exit_code == 2 and "Did you mean 'attribute'" in res.output


def test_choice_options_list_their_words_and_refuse_others_in_one_line():
    res = runner.invoke(app, ["mask-heads", "--help"], env={"COLUMNS": "200"})
    assert "<zero|mean>" in res.output and "<top1|gold>" in res.output
    res = runner.invoke(app, ["mask-heads", "tiny:olmoe", "--heads", "0:1", "--target", "gld"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0] == "Error: --target 'gld': use one of top1, gold (did you mean 'gold'?)"


# ---- the load-option group ----------------------------------------------------------------
def test_every_load_option_has_its_command_line_option():
    """A field added to LoadOptions without its line in LOAD_OPTIONS fails here."""
    assert set(LOAD_OPTIONS) == {f.name for f in dataclasses.fields(LoadOptions)}


def test_every_command_taking_a_model_has_every_load_option():
    for words, cmd in _leaves():
        if not any(p.name in ("model", "models") for p in cmd.params) or words == ("trajectory",):
            continue
        opts = {o for p in cmd.params for o in p.opts}
        for field in LOAD_OPTIONS:
            assert "--" + field.replace("_", "-") in opts, (words, field)


@pytest.fixture
def loads(monkeypatch):
    """The (name, LoadOptions) of every mechmoe.model.load call while the test runs."""
    import mechmoe.model

    real = mechmoe.model.load
    seen = []

    def spy(name, options=None, **keywords):
        seen.append((name, LoadOptions.build(options, **keywords)))
        return real(name, options, **keywords)

    monkeypatch.setattr(mechmoe.model, "load", spy)
    return seen


def test_load_options_reach_load_as_one_value(loads, tmp_path):
    from mechmoe.testing import save_tiny

    folder = save_tiny("olmoe", tmp_path / "m")
    args = [str(folder), "--dtype", "float32", "--device", "cpu", "--tokenizer", str(folder)]
    args += ["--experts-implementation", "grouped_mm", "--attn-implementation", "eager"]
    res = runner.invoke(app, ["probe", *args, "-r", "adj_antonym", "--limit", "1"])
    assert res.exit_code == 0, res.output
    ((name, options),) = loads
    assert name == str(folder)
    assert options == LoadOptions(
        tokenizer=str(folder), experts_implementation="grouped_mm", attn_implementation="eager"
    )
    res = runner.invoke(
        app, ["route", "tiny:olmoe", "--ban", "0:1", "--experts-implementation", "batched_mm"]
    )
    assert res.exit_code == 2 and "did you mean" not in res.output
    assert "--experts-implementation 'batched_mm': use one of eager, grouped_mm" in res.output


def test_defaults_are_the_load_options_defaults(loads):
    res = runner.invoke(app, ["adapters", "check", "tiny:llama", "--positions", "last"])
    assert res.exit_code == 0, res.output
    assert loads == [("tiny:llama", LoadOptions())]


# ---- layout: command modules import at the top, and only public names ----------------------
def _modules():
    return sorted(CLI.glob("*.py"))


def test_cli_modules_import_at_the_top_only():
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path.name}: {node.name} imports inside the function"


def test_cli_modules_import_no_private_name_of_another_package():
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if not node.module.startswith("mechmoe.") or node.module.startswith("mechmoe.cli"):
                    continue
                # mechmoe._types and mechmoe._version are the package's shared vocabulary
                parts = node.module.split(".")[1:]
                assert not any(p.startswith("_") for p in parts[1:]), (
                    path.name,
                    node.module,
                )
                assert not any(
                    a.name.startswith("_") and not a.name.startswith("__") for a in node.names
                ), (path.name, node.module)


def test_every_command_module_is_in_the_table():
    helpers = {"__init__", "_common", "_inputs", "_loading", "_results"}
    modules = {p.stem for p in _modules()} - helpers
    assert modules == {m.rsplit(".", 1)[1] for m, _ in COMMANDS.values()}
