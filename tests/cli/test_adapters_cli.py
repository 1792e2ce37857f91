from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from mechmoe.cli import app

runner = CliRunner()


def test_list_shows_every_family():
    result = runner.invoke(app, ["adapters", "list"])
    assert result.exit_code == 0, result.output
    for name in (
        "OlmoeForCausalLM",
        "MixtralForCausalLM",
        "Qwen2MoeForCausalLM",
        "GPT2LMHeadModel",
    ):
        assert name in result.output


def test_check_tiny_models_prints_a_passing_table():
    result = runner.invoke(app, ["adapters", "check", "tiny:olmoe", "tiny:olmo2"])
    assert result.exit_code == 0, result.output
    assert result.output.count("pass") >= 2
    for identity in ("logits", "heads", "experts", "residual", "unembed"):
        assert identity in result.output


def test_check_local_folder(tmp_path):
    from mechmoe.testing import save_tiny

    folder = save_tiny("qwen2_moe", tmp_path / "q")
    result = runner.invoke(app, ["adapters", "check", str(folder), "--positions", "last"])
    assert result.exit_code == 0, result.output


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    for args in (
        ["adapters", "check", str(tmp_path / "missing")],
        ["adapters", "check", "tiny:bert"],
        ["adapters", "check", "tiny:llama", "--dtype", "float8"],
        ["adapters", "check", "tiny:llama", "--prompts", str(tmp_path / "none.txt")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
        assert result.output.strip().startswith("Error:")
        assert len(result.output.strip().splitlines()) <= 2  # one message (rich may wrap once)


def test_help_does_not_import_torch():
    code = "import sys, mechmoe.cli; sys.exit('torch' in sys.modules or 'nnsight' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
