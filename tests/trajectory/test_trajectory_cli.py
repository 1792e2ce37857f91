from __future__ import annotations

import shutil

import xarray as xr
from typer.testing import CliRunner

from mechmoe.cli import app
from mechmoe.trajectory import open_store

runner = CliRunner()


def test_cli_end_to_end_resume_and_export(tmp_path, tiny_checkpoints):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for f in tiny_checkpoints:
        shutil.copytree(f, ckpts / f.name)
    (ckpts / "logs").mkdir()
    out = tmp_path / "run.zarr"
    args = [
        "trajectory",
        "tiny-olmoe",
        "--checkpoints",
        str(ckpts),
        "--probe",
        "country_capital_city",
    ]
    args += ["--probe-items", "2", "--measures", "hit", "--out", str(out)]
    result = runner.invoke(
        app, [*args, "--revisions", "100,200", "--export-nc", str(tmp_path / "r.nc")]
    )
    assert result.exit_code == 0, result.output
    assert "done" in result.output and "ignored 1 entries" in result.output
    ds = open_store(out)
    assert ds["step"].values.tolist() == [100, 200] and ds.attrs["model"] == "tiny-olmoe"
    assert set(ds.data_vars) == {"hit", "mrr"}
    nc = xr.open_dataset(tmp_path / "r.nc", engine="h5netcdf")
    assert nc["hit"].shape == ds["hit"].shape
    nc.close()
    # rerun over all checkpoints: the first two are skipped, the third is done
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if "│" in ln]
    assert any("300" in ln and "done" in ln for ln in lines)
    assert sum("skipped" in ln for ln in lines) == 2
    assert open_store(out)["step"].values.tolist() == [100, 200, 300]


def test_cli_errors_are_one_line(tmp_path, tiny_checkpoints):
    out = tmp_path / "run.zarr"
    base = ["trajectory", "m", "--probe", "country_capital_city", "--out", str(out)]
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "--revisions SPEC" in result.output
    result = runner.invoke(app, [*base, "--checkpoints", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no such checkpoint folder" in result.output
    result = runner.invoke(
        app, [*base, "--checkpoints", str(tiny_checkpoints[0].parent), "--revisions", "log:x"]
    )
    assert result.exit_code == 2 and "not an integer" in result.output
    result = runner.invoke(
        app, [*base, "--checkpoints", str(tiny_checkpoints[0].parent), "--measures", "hitt"]
    )
    assert result.exit_code == 2 and "did you mean 'hit'" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    mine = tmp_path / "mine.zarr"
    mine.mkdir()
    (mine / "x").write_text("keep")
    result = runner.invoke(
        app,
        [
            "trajectory",
            "m",
            "--probe",
            "country_capital_city",
            "--out",
            str(mine),
            "--checkpoints",
            str(tiny_checkpoints[0].parent),
        ],
    )
    assert result.exit_code == 2 and "not written by mechmoe" in result.output


def test_following_the_advice_of_each_store_error_works(tmp_path, tiny_checkpoints):
    """Each error names a fix that works: the export is the store; an earlier export."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for f in tiny_checkpoints[:1]:
        shutil.copytree(f, ckpts / f.name)
    out = tmp_path / "run.zarr"
    args = ["trajectory", "m", "--checkpoints", str(ckpts), "--probe", "country_capital_city"]
    args += ["--probe-items", "1", "--measures", "hit", "--out", str(out)]
    res = runner.invoke(app, [*args, "--export-nc", str(out)])
    assert res.exit_code == 2 and f"e.g. --export-nc {tmp_path / 'run.nc'}" in res.output
    assert not out.exists()
    res = runner.invoke(app, [*args, "--export-nc", str(tmp_path / "run.nc")])  # the advice
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args, "--export-nc", str(tmp_path / "run.nc")])
    assert res.exit_code == 2 and "holds an earlier export; delete it" in res.output
    (tmp_path / "run.nc").unlink()  # the advice
    res = runner.invoke(app, [*args, "--export-nc", str(tmp_path / "run.nc")])
    assert res.exit_code == 0, res.output
    assert open_store(out)["step"].values.tolist() == [100]


def test_cli_names_a_damaged_chunk_and_the_same_command_repairs_it(tmp_path, tiny_checkpoints):
    """From the command line: a truncated chunk is refused by analyze (one line, exit 2);
    the same ``mechmoe trajectory`` command recomputes just that checkpoint, and the store
    then equals the undamaged one, through open_store and plain xarray alike."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for f in tiny_checkpoints[:2]:
        shutil.copytree(f, ckpts / f.name)
    out = tmp_path / "run.zarr"
    args = ["trajectory", "m", "--checkpoints", str(ckpts), "--probe", "country_capital_city"]
    args += ["--probe-items", "1", "--measures", "hit", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    before = open_store(out).load()
    (part,) = (out / "checkpoints" / "step_000000000200").iterdir()
    chunk = next(p for p in (part / "hit.zarr" / "hit" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:3])
    res = runner.invoke(app, ["analyze", str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "step 200, measure 'hit', variable 'hit'" in res.output
    assert "run the same `mechmoe trajectory` command" in res.output
    res = runner.invoke(app, args)  # the advice
    assert res.exit_code == 0, res.output
    assert "recomputed damaged hit" in " ".join(res.output.split())
    assert open_store(out).load().identical(before)
    assert xr.open_zarr(out).load().identical(before)
