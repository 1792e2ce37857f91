"""The demo end to end on a seconds-sized zoo: zoo → sweep → statistics → report; then cached."""

from __future__ import annotations

import re

import pytest

from mechmoe.zoo.demo import DemoConfig, demo_dir, format_headline_rows, run_demo
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
    rows = format_headline_rows(result)
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
    from mechmoe.zoo.demo import demo_measures

    grid = next(m for m in demo_measures(DemoConfig(n_masked=3)) if m.name == "robustness").ns
    assert 3 in grid
    # the paper's count (10) is read too where the model has more heads than that
    from mechmoe.zoo.demo import _headline_counts

    assert _headline_counts(DemoConfig()) == (1, 10)
    assert _headline_counts(DemoConfig(n_masked=10)) == (10,)
    assert _headline_counts(DemoConfig(zoo=tiny_zoo_config())) == (1,)
    grid = next(m for m in demo_measures(DemoConfig()) if m.name == "robustness").ns
    assert {1, 10} <= set(grid)


def test_second_run_is_cached(result):
    again = run_demo(CFG, root=result.zoo.root.parent.parent, workers=1)
    assert again.swept == {"moe": 0, "dense": 0}
    assert again.headlines == result.headlines or all(
        str(again.headlines[k]) == str(result.headlines[k]) for k in again.headlines
    )
    assert again.report == result.report
