"""The demo end to end on a seconds-sized zoo: zoo → sweep → statistics → report; then cached."""

from __future__ import annotations

import html
import math
import re

import pytest

from mechmoe.study.demo import DemoConfig, demo_dir, run_demo
from mechmoe.zoo.pretrain import tiny_zoo_config

CFG = DemoConfig(
    # enough steps that HIT@10 before masking is above 0, so every figure is drawn
    zoo=tiny_zoo_config(max_steps=48, n_checkpoints=3),
    probe_per_relation=4,
    robustness_ns=(1, 2),
    robustness_seeds=2,
    n_masked=1,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return run_demo(CFG, root=tmp_path_factory.mktemp("cache"), workers=1)


def test_demo_writes_stores_and_a_report(result):
    from mechmoe.trajectory import open_store

    assert result.report.name == "index.html" and result.report.is_file()
    assert result.report.parent == demo_dir(CFG, result.zoo.root.parent.parent) / "report"
    page = result.report.read_text(encoding="utf-8")
    assert len(re.findall(r"data:image/png;base64,", page)) == 8
    for kind in ("moe", "dense"):
        ds = open_store(result.stores[kind])
        steps = [c["step"] for c in result.zoo.log(kind)["checkpoints"]]
        assert ds["step"].values.tolist() == steps
        assert result.swept[kind] == len(steps)
    assert "routing_choice" in open_store(result.stores["moe"])
    assert "routing_choice" not in open_store(result.stores["dense"])
    # the verdict table compares MoE with dense on the three claims
    assert len(result.checks) == 3
    assert {v for *_, v in result.checks} <= {"yes", "no", "not measured"}
    rows = result.rows
    assert rows[0][0].startswith("top-1% backbone share")
    # the numbers printed are the analysis' numbers
    moe_share = result.headlines["moe"]["backbone_share"]
    assert rows[0][1] == f"{100 * moe_share:.1f}%"
    # the masking rows say what was masked: n of all the model's heads, and the control's draws
    heads = CFG.zoo.layers * CFG.zoo.heads
    assert rows[2][0] == f"HIT@10 drop, top-1 of {heads} heads masked (25%; paper: 10 of 256)"
    assert rows[3][0] == f"HIT@10 drop, 1 random of {heads} heads (control, mean of 2 draws)"
    drop = result.headlines["dense"]["hit_drop_top"]
    assert rows[2][2] == ("n/a" if drop != drop else f"{100 * drop:.1f}%")
    # 4 heads: no room for the paper's count of 10, so no second pair of masking rows
    assert result.count_headlines is None and len(rows) == 5


def _page_rows(page: str) -> list[tuple[str, ...]]:
    """The rows of the report's headline table, as text."""
    table = re.search(r"<table class='headline'>(.*?)</table>", page, re.S)
    assert table, "the page has a headline table"
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)
    cells = [tuple(html.unescape(c) for c in re.findall(r"<t[dh]>(.*?)</t[dh]>", r)) for r in rows]
    return cells[1:]  # after the column names


def test_report_shows_the_rows_the_terminal_prints(result):
    page = result.report.read_text(encoding="utf-8")
    assert _page_rows(page) == result.rows
    # including the held-out HIT@10 of the training log, which no store holds
    held_out = result.rows[-1]
    assert held_out[0] == "held-out HIT@10 city_country, last checkpoint"
    last = [
        result.training[k]["checkpoints"][-1]["eval"]["city_country"]["hit@10"]
        for k in ("moe", "dense")
    ]
    assert held_out[1:] == tuple(f"{x:.3f}" for x in last)
    assert "nnsight" in page  # the backend that measured the stores


def test_masked_heads_follow_the_papers_share():
    from mechmoe.zoo.pretrain import ZooConfig

    # the paper: 10 of 256 heads; 16 heads -> 0.625 -> 1, 64 -> 2.5 -> 2 (round half to even),
    # 256 -> 10; never fewer than one; an explicit count wins
    assert DemoConfig().masked_heads() == 1
    assert DemoConfig(zoo=ZooConfig(heads=16, hidden=128)).masked_heads() == 2
    assert DemoConfig(zoo=ZooConfig(layers=16, heads=16)).masked_heads() == 10
    assert DemoConfig(zoo=tiny_zoo_config()).masked_heads() == 1
    assert DemoConfig(n_masked=3).masked_heads() == 3
    # the robustness grid always holds the headline count
    from mechmoe.study.demo import demo_measures

    grid = next(m for m in demo_measures(DemoConfig(n_masked=3)) if m.name == "robustness").ns
    assert 3 in grid
    # the paper's count (10) is read too where the model has more heads than that
    from mechmoe.study.demo import _headline_counts

    assert _headline_counts(DemoConfig()) == (1, 10)
    assert _headline_counts(DemoConfig(n_masked=10)) == (10,)
    assert _headline_counts(DemoConfig(zoo=tiny_zoo_config())) == (1,)
    grid = next(m for m in demo_measures(DemoConfig()) if m.name == "robustness").ns
    assert {1, 10} <= set(grid)


def test_another_backend_measures_again_on_the_same_zoo(result, monkeypatch):
    """--backend transformerlens: the zoo is reused as it is, every checkpoint is measured
    again with the other backend into its own stores, and the numbers agree."""
    pytest.importorskip("transformer_lens", reason="the transformerlens backend needs it")
    import mechmoe.zoo.pretrain
    from mechmoe.trajectory import open_store

    def no_training(*args, **kwargs):
        raise AssertionError("a backend change must not retrain the zoo")

    monkeypatch.setattr(mechmoe.zoo.pretrain, "train_one", no_training)
    monkeypatch.setattr(mechmoe.zoo.pretrain, "_train_side_by_side", no_training)
    root = result.zoo.root.parent.parent
    tl = run_demo(CFG, root=root, workers=1, backend="transformerlens")
    assert tl.backend == "transformerlens" and tl.zoo.root == result.zoo.root
    assert tl.report.parent == demo_dir(CFG, root, "transformerlens") / "report"
    for kind, store in tl.stores.items():
        assert store != result.stores[kind] and store.is_relative_to(tl.report.parent.parent)
        assert tl.swept[kind] == result.swept[kind] > 0  # measured, not read from nnsight's
        ds = open_store(store)
        assert ds.attrs["backend"] == "transformerlens"
        assert open_store(result.stores[kind]).attrs["backend"] == "nnsight"
        for name, value in result.headlines[kind].items():
            if isinstance(value, float):
                got = tl.headlines[kind][name]
                assert math.isclose(got, value, abs_tol=1e-5) or (
                    math.isnan(got) and math.isnan(value)
                ), name
            else:
                assert tl.headlines[kind][name] == value, name
    assert tl.rows == result.rows
    assert "transformerlens" in tl.report.read_text(encoding="utf-8")
    # the first backend's stores and report are still there, untouched
    assert result.report.is_file() and result.report != tl.report


def test_unknown_backend_is_refused_before_any_training(tmp_path):
    from mechmoe.core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="did you mean 'nnsight'"):
        run_demo(CFG, root=tmp_path, workers=1, backend="nnsigt")
    assert not (tmp_path / "zoo").exists()


def test_second_run_is_cached(result):
    again = run_demo(CFG, root=result.zoo.root.parent.parent, workers=1)
    assert again.swept == {"moe": 0, "dense": 0}
    assert again.headlines == result.headlines or all(
        str(again.headlines[k]) == str(result.headlines[k]) for k in again.headlines
    )
    assert again.report == result.report
