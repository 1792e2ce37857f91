"""``mechmoe analyze`` on trajectory stores written through the store's own writer."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from mechmoe.analysis import headline, summarize_run
from mechmoe.analysis.testing import toy_store
from mechmoe.cli import app
from mechmoe.ops.results import open_result
from mechmoe.report import headline_rows
from mechmoe.trajectory import open_store

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


def write_store(path, *, moe: bool, steps=(0, 100, 200, 300, 400), heads=False, seeds=None):
    """The toy store's steps written as checkpoints of a real trajectory store.

    ``heads``: write the head scores too (the store then knows its head count);
    ``seeds``: keep only that many random-head draws."""
    from mechmoe.trajectory.sources import Checkpoint
    from mechmoe.trajectory.store import CheckpointResult, TrajectoryStore

    toy = toy_store(moe=moe, steps=steps)
    if seeds is not None:
        toy = toy.isel(seed=list(range(seeds)))
    measures = {m: {} for m, names in MEASURES.items() if names[0] in toy}
    if heads:
        measures["head_lpi"] = {}
    store = TrajectoryStore.create_or_open(path, {"model": toy.attrs["model"]}, measures)
    for i, step in enumerate(toy["step"].values.tolist()):
        at = toy.isel(step=i).drop_vars(["step", "tokens", "revision", "weights_hash"])
        datasets = {m: at[MEASURES.get(m, ["head_score"])] for m in measures}
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


def table_rows(output: str) -> list[tuple[str, ...]]:
    """The body rows of the (first) table rich printed, as the cells' text."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            return rows
        rows.append(tuple(c.strip() for c in line.strip("│").split("│")))
    raise AssertionError(f"no end of the table in {output!r}")


def shared_rows(paths, n_masked: int) -> list[tuple[str, ...]]:
    """What the demo and the report show for these stores: headline_rows at one count."""
    stores = [open_store(p) for p in paths]
    heads = [headline(summarize_run(ds, n_masked=n_masked)) for ds in stores]
    return headline_rows(stores, [heads])


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
    assert "n/a" in res.output.split("backbone share")[1].split("\n")[0]  # all-zero PU
    assert table_rows(res.output)[1][1] == "n/a"  # consolidation step
    assert "one: 1 checkpoint: no backbone share or consolidation step" in res.output


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


@pytest.fixture(scope="module")
def head_store(tmp_path_factory):
    """A store that knows its head count (2 layers × 4 heads)."""
    path = tmp_path_factory.mktemp("heads") / "heads.zarr"
    write_store(path, moe=True, heads=True)
    return path


@pytest.mark.parametrize("n_masked", [1, 10])
@pytest.mark.parametrize("which", ["one run", "compare", "with heads"])
def test_analyze_rows_are_the_shared_headline_rows(stores, head_store, which, n_masked):
    """The table is headline_rows (what `mechmoe demo` prints and the report draws) for
    the same stores, then the random control's spread over its draws."""
    moe, _, dense, _ = stores
    paths = {"one run": [moe], "compare": [moe, dense], "with heads": [head_store]}[which]
    args = ["analyze", str(paths[0]), "--n-masked", str(n_masked)]
    if len(paths) > 1:
        args += ["--compare", str(paths[1])]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rows, expected = table_rows(res.output), shared_rows(paths, n_masked)
    assert rows[: len(expected)] == expected
    heads = [headline(summarize_run(open_store(p), n_masked=n_masked)) for p in paths]
    assert rows[len(expected) :] == [
        (
            "HIT@10 drop, random heads: std over draws",
            *(f"± {fmt(h['hit_drop_random_std'])}" for h in heads),
        )
    ]
    if which == "with heads":
        assert expected[2][0].startswith(f"HIT@10 drop, top-{n_masked} of 8 heads masked")


def test_analyze_count_of_one_reads_singular(tmp_path):
    one_draw = tmp_path / "one_draw.zarr"
    write_store(one_draw, moe=True, seeds=1)
    res = runner.invoke(app, ["analyze", str(one_draw), "--n-masked", "1"])
    assert res.exit_code == 0, res.output
    rows = table_rows(res.output)
    assert rows == shared_rows([one_draw], 1)  # one draw: no spread row
    labels = [r[0] for r in rows]
    assert labels[2] == "HIT@10 drop, top-1 head masked"
    assert labels[3] == "HIT@10 drop, 1 random head (control, mean of 1 draw)"
    assert "1 random heads" not in res.output
    assert not any(re.search(r"\b1 [a-z ]*heads\b|\b1 draws\b", label) for label in labels)
