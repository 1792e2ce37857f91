"""``mechmoe analyze`` on trajectory stores written through the store's own writer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from mechmoe.analysis import headline, summarize_run
from mechmoe.analysis.testing import toy_store
from mechmoe.cli import app
from mechmoe.ops.results import open_result

runner = CliRunner()

MEASURES = {
    "neuron_lpi": ["neuron_score", "neuron_n_chosen"],
    "hit": ["hit", "mrr"],
    "robustness": [
        "robust_hit_base",
        "robust_hit_top",
        "robust_hit_random",
        "robust_drop_top",
        "robust_drop_random",
    ],
    "routing": ["routing_choice"],
}


def write_store(path, *, moe: bool, steps=(0, 100, 200, 300, 400)):
    """The toy store's steps written as checkpoints of a real trajectory store."""
    from mechmoe.trajectory.sources import Checkpoint
    from mechmoe.trajectory.store import CheckpointResult, TrajectoryStore

    toy = toy_store(moe=moe, steps=steps)
    measures = {m: {} for m, names in MEASURES.items() if names[0] in toy}
    store = TrajectoryStore.create_or_open(path, {"model": toy.attrs["model"]}, measures)
    for i, step in enumerate(toy["step"].values.tolist()):
        at = toy.isel(step=i).drop_vars(["step", "tokens", "revision", "weights_hash"])
        datasets = {m: at[MEASURES[m]] for m in measures}
        ckpt = Checkpoint(step, tokens=float(toy["tokens"].values[i]), label=f"step{step}")
        res = CheckpointResult(
            ckpt,
            weights_hash=str(toy["weights_hash"].values[i]),
            datasets=datasets,
            model_attrs={k: toy.attrs[k] for k in ("is_moe", "top_k", "n_experts")},
        )
        assert store.write(res) == "done"
    return toy


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    moe, dense = root / "moe.zarr", root / "dense.zarr"
    return moe, write_store(moe, moe=True), dense, write_store(dense, moe=False)


def fmt(x: float) -> str:
    return f"{100 * x:.1f}%"


def test_analyze_one_run_writes_summary(stores, tmp_path):
    moe, toy, _, _ = stores
    out = tmp_path / "stats.nc"
    res = runner.invoke(app, ["analyze", str(moe), "--out", str(out)])
    assert res.exit_code == 0, res.output
    expected = headline(summarize_run(toy))
    assert "top-1% backbone share" in res.output and "HIT@10 drop" in res.output
    assert fmt(expected["backbone_share"]) in res.output
    assert fmt(expected["hit_drop_top"]) in res.output
    assert f"{int(expected['consolidation_step']):,}" in res.output
    back = open_result(out)
    assert float(back["backbone_share"]) == pytest.approx(expected["backbone_share"])
    np.testing.assert_allclose(
        back["router_saturation"].values, summarize_run(toy)["router_saturation"].values
    )
    assert back.attrs["model"] == "toy-moe" and back.attrs["analysis_q"] == 0.01
    # an earlier result is replaced only with --overwrite
    again = runner.invoke(app, ["analyze", str(moe), "--out", str(out)])
    assert again.exit_code == 2 and "overwrite" in again.output.lower()
    again = runner.invoke(
        app, ["analyze", str(moe), "--out", str(out), "--overwrite", "--q", "0.05"]
    )
    assert again.exit_code == 0, again.output
    assert open_result(out).attrs["analysis_q"] == 0.05


def test_analyze_compare_side_by_side(stores, tmp_path):
    moe, toy_moe, dense, toy_dense = stores
    res = runner.invoke(
        app,
        [
            "analyze",
            str(moe),
            "--compare",
            str(dense),
            "--names",
            "MoE,dense",
            "--compare-out",
            str(tmp_path / "dense.zarr"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "MoE" in res.output and "dense" in res.output
    h_dense = headline(toy_dense)
    assert fmt(h_dense["hit_drop_top"]) in res.output
    assert math.isnan(h_dense["consolidation_step"]) and "never" in res.output
    assert "dense model, no router" in res.output
    back = open_result(tmp_path / "dense.zarr")
    assert back.attrs["model"] == "toy-dense" and "routing_choice" not in back


def test_analyze_user_errors(stores, tmp_path):
    moe, _, _, _ = stores
    cases = [
        ["analyze", str(tmp_path / "missing.zarr")],
        ["analyze", str(moe), "--out", str(tmp_path / "stats.txt")],
        ["analyze", str(moe), "--compare-out", str(tmp_path / "x.nc")],
        ["analyze", str(moe), "--names", "a,b"],
    ]
    for args in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output
    user_file = tmp_path / "mine.nc"
    user_file.write_bytes(b"not mechmoe")
    res = runner.invoke(app, ["analyze", str(moe), "--out", str(user_file), "--overwrite"])
    assert res.exit_code == 2 and user_file.read_bytes() == b"not mechmoe"


def test_analyze_single_checkpoint(tmp_path):
    one = tmp_path / "one.zarr"
    write_store(one, moe=True, steps=(500,))
    res = runner.invoke(app, ["analyze", str(one)])
    assert res.exit_code == 0, res.output
    assert "n/a (one checkpoint)" in res.output
    assert "n/a" in res.output.split("backbone share")[1].split("\n")[0]  # all-zero PU


def test_analyze_does_not_import_torch(stores):
    import subprocess
    import sys

    moe = stores[0]
    code = (
        "import sys\n"
        "from mechmoe.cli import app\n"
        f"app(['analyze', {str(moe)!r}], standalone_mode=False)\n"
        "print('heavy:', sorted(m for m in ('torch', 'nnsight') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "backbone share" in out.stdout and "heavy: []" in out.stdout
