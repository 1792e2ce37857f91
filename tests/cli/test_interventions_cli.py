"""``mechmoe probe``, ``mask-heads`` and ``route`` on tiny models through typer's runner."""

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


def test_mask_heads_given_heads(tmp_path):
    out = tmp_path / "mask.zarr"
    res = run(
        "mask-heads",
        "tiny:llama",
        "--heads",
        "0:1,1:2",
        "-r",
        "adj_antonym",
        "--limit",
        "3",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    assert "L0.H1, L1.H2" in res.output and "HIT@10 masked" in res.output
    ds = open_result(out)
    assert list(ds["condition"].values) == ["base", "masked"]
    assert ds.attrs["heads"] == "0:1,1:2"
    assert not (ds["logprob"].sel(condition="base") == ds["logprob"].sel(condition="masked")).all()


def test_mask_heads_top_by_lpi(tmp_path):
    """--top 3 masks the three heads with the highest head-level LPI over the probe, and the
    masked recall is evaluate() under that mask (mean mode: means over the probe)."""
    from mechmoe.core.interventions import MaskHeads
    from mechmoe.ops.attribution import attribute
    from mechmoe.ops.interventions import head_means
    from mechmoe.ops.robustness import rank_heads
    from mechmoe.probes import evaluate, load_probe
    from mechmoe.testing import tiny_model

    out = tmp_path / "top.nc"
    res = run(
        "mask-heads",
        "tiny:mixtral",
        "--top",
        "3",
        "--mode",
        "mean",
        "-r",
        "adj_antonym",
        "--limit",
        "3",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    model = tiny_model("mixtral")
    probe = load_probe("adj_antonym").head(3)
    prompts = list(probe.prompts)
    top3 = list(rank_heads(attribute(model, prompts, level="head")["score"])[:3])
    label = ", ".join(f"L{la}.H{h}" for la, h in top3)
    assert f"masked 3 heads (mean): {label}" in res.output
    ds = open_result(out)
    assert ds.attrs["heads"] == ",".join(f"{la}:{h}" for la, h in top3)
    mask = MaskHeads(top3, mode="mean", means=head_means(model, prompts))
    masked = evaluate(model, probe, progress=False, interventions=mask)
    assert ds["rank"].sel(condition="masked").values.tolist() == masked["rank"].values.tolist()
    base = evaluate(model, probe, progress=False)
    assert ds["rank"].sel(condition="base").values.tolist() == base["rank"].values.tolist()


def test_mask_heads_counts_a_repeated_head_once(tmp_path):
    out = tmp_path / "dup.nc"
    res = run(
        "mask-heads",
        "tiny:llama",
        "--heads",
        "0:1,0:1",
        "-r",
        "adj_antonym",
        "--limit",
        "2",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    assert "masked 1 head (zero): L0.H1" in res.output
    assert open_result(out).attrs["heads"] == "0:1"


def test_mask_heads_grid_runs_the_robustness_experiment(tmp_path):
    out = tmp_path / "grid.nc"
    res = run(
        "mask-heads",
        "tiny:olmoe",
        "--grid",
        "1,2,99",
        "--seeds",
        "2",
        "-r",
        "adj_antonym",
        "--limit",
        "3",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    ds = open_result(out)
    assert list(ds["n"].values) == [1, 2, 8]  # 99 is capped at the model's 8 heads
    assert ds.sizes["seed"] == 2 and "drop random" in res.output


def test_route_prints_predictions_and_metrics(tmp_path):
    out = tmp_path / "route.nc"
    res = run(
        "route",
        "tiny:olmoe",
        "--ban",
        "0:1,1:2",
        "--force",
        "1:3",
        "--top-k",
        "3",
        "--scale",
        "0:4=0.5",
        "--zero",
        "1:5",
        "--prompt",
        "The capital of France is",
        "--prompt",
        "Tokyo is a city in",
        "-r",
        "adj_antonym",
        "--limit",
        "3",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    assert "BanExperts({0: [1], 1: [2]})" in res.output and "HIT@10 routed" in res.output
    ds = open_result(out)
    assert ds.sizes["prompt"] == 2 and list(ds["condition"].values) == ["base", "routed"]
    assert float(ds["routing_changed"].min()) > 0
    assert "gold_rank" in ds and "kl" in ds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("route", "tiny:llama", "--ban", "0:1"), "layer 0 of tiny:llama is dense"),
        (
            ("route", "tiny:olmoe", "--ban", "0:1", "--force", "0:1"),
            "expert 1 is both banned and forced",
        ),
        (("route", "tiny:olmoe", "--force", "0:1,0:2,0:3"), "3 experts forced but top-k is 2"),
        (("route", "tiny:olmoe", "--ban", "x"), "--ban 'x'"),
        (("route", "tiny:olmoe", "--scale", "0:1"), "LAYER:EXPERT=FACTOR"),
        (("route", "tiny:olmoe", "--top-k", "99"), "k=99 at layer 0 is out of range"),
        (("route", "tiny:olmoe"), "nothing to change"),
        (("mask-heads", "tiny:olmoe", "--heads", "9:1"), "layer 9 is out of range"),
        (("mask-heads", "tiny:olmoe", "--heads", "1:7"), "head 7 at layer 1 is out of range"),
        (("mask-heads", "tiny:olmoe", "--top", "2", "--heads", "0:1"), "exactly one of"),
        (("mask-heads", "tiny:olmoe", "--top", "2", "--out", "x.csv"), "must end in .zarr or .nc"),
        (("probe", "tiny:olmoe", "-r", "no_such_relation"), "no_such_relation"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message):
    res = run(*args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.output


def test_route_warns_when_the_scaling_leaves_no_usable_logits():
    """Gates scaled by 1e38 overflow to NaN logits: route says the output means nothing."""
    scale = ",".join(f"{la}:{e}=1e38" for la in range(2) for e in range(8))
    with pytest.warns(UserWarning, match=r"^1 of 1 prompts have logits that are all equal or"):
        res = run("route", "tiny:olmoe", "--scale", scale, "--prompt", "The capital of France is")
    assert res.exit_code == 0, res.output
    # an ordinary scaling stays silent
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        res = run("route", "tiny:olmoe", "--scale", "0:1=0.5", "--prompt", "Tokyo is a city in")
    assert res.exit_code == 0, res.output
