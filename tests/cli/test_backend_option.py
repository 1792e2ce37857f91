"""``--backend`` on every command that loads a model, through typer's runner.

Each command is run with ``--backend transformerlens``; the test checks that every model
the command loaded was loaded with that backend and that the file it wrote records it.
That both backends compute the same numbers is tests/backends/test_equivalence.py's job.

A command loads a model when it takes one as its argument, or when it trains the models it
then measures (``mechmoe demo``, :data:`TRAINS_ITS_MODELS`).
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


#: Commands that load models they pre-train themselves rather than one given as argument.
TRAINS_ITS_MODELS = {"demo"}


def _loads_a_model(name: str, cmd) -> bool:
    return name in TRAINS_ITS_MODELS or any(p.name in ("model", "models") for p in cmd.params)


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
        # on the seconds-sized zoo of the `small_demo` fixture; it writes one store per model
        "demo": (
            ["demo", "--root", str(tmp / "cache"), "--workers", "1", "--out", str(tmp / "rep")],
            tmp / "cache" / "demo",
        ),
    }


def test_every_model_loading_command_has_the_option_and_a_case_here(tmp_path):
    commands = {" ".join(path): cmd for path, cmd in _commands()}
    assert TRAINS_ITS_MODELS <= set(commands)
    loading = {name for name, cmd in commands.items() if _loads_a_model(name, cmd)}
    for name in loading:
        opts = [o for p in commands[name].params for o in p.opts]
        assert "--backend" in opts, f"`mechmoe {name}` has no --backend"
    # and no command takes --backend without loading a model
    with_option = {n for n, c in commands.items() if any("--backend" in p.opts for p in c.params)}
    assert with_option == loading
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


@pytest.fixture
def small_demo(monkeypatch):
    """``mechmoe demo`` with the CLI's own arguments on a seconds-sized zoo."""
    import mechmoe.study.demo
    from mechmoe.zoo.pretrain import tiny_zoo_config

    small = mechmoe.study.demo.DemoConfig(
        zoo=tiny_zoo_config(max_steps=8, n_checkpoints=2),
        probe_per_relation=2,
        robustness_ns=(1,),
        robustness_seeds=2,
    )
    real = mechmoe.study.demo.run_demo

    def run_small(config=None, **kwargs):
        return real(small, **kwargs)

    monkeypatch.setattr(mechmoe.study.demo, "run_demo", run_small)


@pytest.mark.parametrize(
    "command", ["attribute", "probe", "mask-heads", "route", "adapters check", "trajectory", "demo"]
)
def test_backend_option_reaches_the_model(tmp_path, loaded, small_demo, command):
    pytest.importorskip("transformer_lens", reason="the transformerlens backend needs it")
    args, written = _cases(tmp_path)[command]
    result = runner.invoke(app, [*args, "--backend", BACKEND])
    assert result.exit_code == 0, result.output
    assert loaded and set(loaded) == {BACKEND}
    if written is None:
        return
    if command in ("trajectory", "demo"):
        from mechmoe.trajectory import open_store

        stores = [written] if command == "trajectory" else sorted(written.glob("*/*/*.zarr"))
        assert len(stores) == (1 if command == "trajectory" else 2)
        for store in stores:  # the store's attr comes from each checkpoint's record
            assert open_store(store).attrs["backend"] == BACKEND
        if command == "demo":
            assert {s.parent.name for s in stores} == {BACKEND}
            assert f"measured with {BACKEND}" in result.output
    else:
        from mechmoe.ops.results import open_result

        assert open_result(written).attrs["backend"] == BACKEND


@pytest.mark.parametrize("command", ["probe", "demo"])
def test_unknown_backend_is_one_line_naming_the_close_one(tmp_path, command):
    args = {
        "probe": ["probe", "tiny:olmoe", "-r", "adj_antonym"],
        "demo": ["demo", "--root", str(tmp_path), "--workers", "1"],
    }[command]
    result = runner.invoke(app, [*args, "--backend", "nnsigt"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("Error:") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "did you mean 'nnsight'" in result.output
    assert not (tmp_path / "zoo").exists()  # the demo refused before training anything
