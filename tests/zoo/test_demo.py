"""The demo end to end on a seconds-sized zoo: zoo → sweep → statistics → report; then cached."""

from __future__ import annotations

import re

import pytest

from mechmoe.zoo.demo import DemoConfig, demo_dir, format_headline_rows, run_demo
from mechmoe.zoo.pretrain import tiny_zoo_config

CFG = DemoConfig(
    zoo=tiny_zoo_config(max_steps=12, n_checkpoints=3),
    probe_per_relation=4,
    robustness_ns=(1, 2),
    robustness_seeds=2,
    n_masked=1,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return run_demo(CFG, root=tmp_path_factory.mktemp("cache"))


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


def test_second_run_is_cached(result):
    again = run_demo(CFG, root=result.zoo.root.parent.parent)
    assert again.swept == {"moe": 0, "dense": 0}
    assert again.headlines == result.headlines or all(
        str(again.headlines[k]) == str(result.headlines[k]) for k in again.headlines
    )
    assert again.report == result.report
