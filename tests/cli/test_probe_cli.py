"""``mechmoe probe`` on tiny models through typer's runner."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mechmoe.cli import app
from mechmoe.ops.results import open_result

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_probe_prints_table_and_writes_result(tmp_path):
    from mechmoe.probes import evaluate, load_probe, summarize
    from mechmoe.testing import tiny_model

    out = tmp_path / "probe.nc"
    res = run(
        "probe",
        "tiny:olmoe",
        "-r",
        "adj_antonym,noun_plural",
        "--limit",
        "3",
        "--k",
        "5",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    ds = open_result(out)
    assert ds.sizes["item"] == 6 and int(ds.attrs["k"]) == 5
    assert set(ds["relation"].values) == {"adj_antonym", "noun_plural"}
    # the file holds what the Python API computes, and the table prints its summary
    probe = load_probe("adj_antonym,noun_plural").head(3, per_relation=True)
    ref = evaluate(tiny_model("olmoe"), probe, k=5, progress=False)
    assert ds["rank"].values.tolist() == ref["rank"].values.tolist()
    assert ds["subject"].values.tolist() == list(probe.subjects)
    summary = summarize(ref)
    rows = {ln.split("│")[1].strip(): ln for ln in res.output.splitlines() if ln.count("│") >= 4}
    for rel in ("adj_antonym", "noun_plural", "all"):
        cells = [c.strip() for c in rows[rel].split("│")[1:-1]]
        n = int(summary["count"].sel(relation=rel))
        hit = float(summary["hit"].sel(relation=rel))
        mrr = float(summary["mrr"].sel(relation=rel))
        assert cells == [rel, str(n), f"{hit:.3f}", f"{mrr:.3f}"], rows[rel]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("probe", "tiny:olmoe", "-r", "no_such_relation"), "no_such_relation"),
        (("probe", "tiny:olmoe", "--device", "meta"), "holds no weights"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message):
    res = run(*args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
