"""``mechmoe route`` on tiny models through typer's runner."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mechmoe.cli import app
from mechmoe.ops.results import open_result

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


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


def test_route_writes_what_route_effects_computes(tmp_path):
    import numpy as np

    from mechmoe.core.interventions import BanExperts
    from mechmoe.ops.route_effects import route_effects
    from mechmoe.testing import tiny_model

    out = tmp_path / "r.nc"
    prompts = ["The capital of France is", "Tokyo is a city in"]
    res = run("route", "tiny:olmoe", "--ban", "0:1", "--out", str(out), "--n-top", "3",
              *[a for p in prompts for a in ("--prompt", p)])  # fmt: skip
    assert res.exit_code == 0, res.output
    ref = route_effects(tiny_model("olmoe"), prompts, BanExperts({0: [1]}), n_top=3)
    got = open_result(out)
    for name in ("kl", "delta_logprob_top1", "routing_changed", "top_token", "top_logprob"):
        np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)
