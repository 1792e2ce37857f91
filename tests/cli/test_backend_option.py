"""``--backend`` on every command that loads a model, through typer's runner.

Each command is run with ``--backend transformerlens``; the test checks that every model
the command loaded was loaded with that backend and that the file it wrote records it.
That both backends compute the same numbers is tests/backends/test_equivalence.py's job.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from mechmoe.cli import app

runner = CliRunner()
BACKEND = "transformerlens"


def _commands(cmd=None, path: tuple[str, ...] = ()):
    """Every leaf command of the app as (name words, click command)."""
    cmd = typer.main.get_command(app) if cmd is None else cmd
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, cmd


def _loads_a_model(cmd) -> bool:
    return any(p.name in ("model", "models") for p in cmd.params)


def _cases(tmp: Path) -> dict[str, tuple[list[str], Path | None]]:
    """Per command: its arguments on a tiny model, and the file it writes (if any)."""
    from mechmoe.testing import save_tiny

    ckpts = tmp / "ckpts"
    save_tiny("olmoe", ckpts / "step100")
    probe = ["adj_antonym", "--limit", "2"]
    return {
        "attribute": (
            ["attribute", "tiny:olmoe", "--probe", *probe, "-l", "head", "-o", str(tmp / "a.nc")],
            tmp / "a.nc",
        ),
        "probe": (["probe", "tiny:olmoe", "-r", *probe, "--out", str(tmp / "p.nc")], tmp / "p.nc"),
        "mask-heads": (
            [
                "mask-heads",
                "tiny:olmoe",
                "--heads",
                "0:1",
                "-r",
                *probe,
                "--out",
                str(tmp / "m.nc"),
            ],
            tmp / "m.nc",
        ),
        "route": (
            ["route", "tiny:olmoe", "--ban", "1:3", "--prompt", "The capital of France is"]
            + ["--out", str(tmp / "r.nc")],
            tmp / "r.nc",
        ),
        "adapters check": (["adapters", "check", "tiny:olmoe", "--positions", "last"], None),
        "trajectory": (
            ["trajectory", "tiny-olmoe", "--checkpoints", str(ckpts), "--probe", "adj_antonym"]
            + ["--probe-items", "2", "--measures", "hit", "--out", str(tmp / "run.zarr")],
            tmp / "run.zarr",
        ),
    }


def test_every_model_loading_command_has_the_option_and_a_case_here(tmp_path):
    loading = {" ".join(path) for path, cmd in _commands() if _loads_a_model(cmd)}
    for name in loading:
        cmd = dict((" ".join(p), c) for p, c in _commands())[name]
        assert any("--backend" in p.opts for p in cmd.params), f"`mechmoe {name}` has no --backend"
    assert loading == set(_cases(tmp_path)), "every model-loading command is run below"


@pytest.fixture
def loaded(monkeypatch) -> list[str]:
    """The backend of every model loaded through mechmoe.model.load while the test runs."""
    import mechmoe.model

    real = mechmoe.model.load
    seen: list[str] = []

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        seen.append(model.backend)
        return model

    monkeypatch.setattr(mechmoe.model, "load", spy)
    return seen


@pytest.mark.parametrize(
    "command", ["attribute", "probe", "mask-heads", "route", "adapters check", "trajectory"]
)
def test_backend_option_reaches_the_model(tmp_path, loaded, command):
    pytest.importorskip("transformer_lens", reason="the transformerlens backend needs it")
    args, written = _cases(tmp_path)[command]
    result = runner.invoke(app, [*args, "--backend", BACKEND])
    assert result.exit_code == 0, result.output
    assert loaded and set(loaded) == {BACKEND}
    if written is None:
        return
    if command == "trajectory":
        from mechmoe.trajectory import open_store

        assert open_store(written).attrs["backend"] == BACKEND  # from each checkpoint's record
    else:
        from mechmoe.ops.results import open_result

        assert open_result(written).attrs["backend"] == BACKEND


def test_unknown_backend_is_one_line_naming_the_close_one():
    result = runner.invoke(app, ["probe", "tiny:olmoe", "-r", "adj_antonym", "--backend", "nnsigt"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("Error:") and "Traceback" not in result.output
    assert "did you mean 'nnsight'" in result.output
