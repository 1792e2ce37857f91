"""Non-finite activations: an error naming the first layer, never a vacuous result.

NaN or infinite *weights* are refused at load (tests/test_load_weights.py). Finite
weights can still overflow: a checkpoint whose layer-1 MLP is scaled near float16's
limit runs in float32 but overflows when loaded in float16.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import mechmoe
from mechmoe.cli import app
from mechmoe.core.errors import InvalidInputError, NonFiniteError
from mechmoe.ops.conformance import IDENTITIES, IdentityResult, check_model
from mechmoe.testing import tiny_hf_model, tiny_model, tiny_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory):
    hf = tiny_hf_model("llama", seed=0)
    mlp = hf.model.layers[1].mlp
    with torch.no_grad():
        for w in (mlp.up_proj.weight, mlp.down_proj.weight):
            w.mul_(6e4 / w.abs().max())
    folder = tmp_path_factory.mktemp("overflow") / "llama"
    hf.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_overflow_in_float16_names_the_layer(overflowing):
    model = mechmoe.load(overflowing, dtype="float16")  # the weights are finite: it loads
    with pytest.raises(NonFiniteError, match=r"from layer 1 \(FFN\) on.*--dtype float32") as err:
        model.capture(["The capital of France is"])
    assert err.value.where == "layer 1 (FFN)" and "\n" not in str(err.value)
    fp32 = mechmoe.load(overflowing)
    assert torch.isfinite(fp32.capture(["The capital of France is"]).logits).all()


def test_nan_in_a_weight_set_after_loading(tmp_path):
    model = tiny_model("olmoe")
    with torch.no_grad():
        model.hf.model.layers[1].self_attn.o_proj.weight[0, 0] = float("nan")
    with pytest.raises(
        NonFiniteError, match=r"from layer 1 \(attention\) on.*check the checkpoint"
    ):
        model.capture(["Tokyo is a city in"])


def test_padding_alone_is_not_an_error():
    """Left padding is not a requested position: its values do not count."""
    model = tiny_model("olmoe")
    cap = model.capture(["a", "Tokyo is a city in the country of"], positions="all")
    assert not cap.batch.valid.all()


def test_check_model_fails_on_non_finite(overflowing):
    report = check_model(mechmoe.load(overflowing, dtype="float16"))
    assert not report.passed
    assert [r.identity for r in report.results] == list(IDENTITIES)
    for r in report.results:
        assert not r.passed and math.isnan(r.max_abs_error)
        assert r.where == "not finite from layer 1 (FFN)"


def test_identity_result_never_passes_non_finite():
    ok = IdentityResult("logits", "", 0.0, 1.0, 1e-5)
    assert ok.passed
    assert not IdentityResult("logits", "", math.nan, 1.0, 1e-5).passed
    assert not IdentityResult("logits", "", math.inf, math.inf, 1e-5).passed  # inf ≤ tol·inf
    assert not IdentityResult("logits", "", 0.0, math.nan, 1e-5).passed


def test_conformance_tracker_records_a_nan_where_it_appears():
    """Worst-error tracking sees NaN (``NaN >= err`` is false, so a plain max misses it)."""
    from mechmoe.ops.conformance import _Worst

    w = _Worst()
    valid = torch.ones(1, 2, dtype=torch.bool)
    w.add(torch.zeros(1, 2, 3), torch.full((1, 2, 3), 0.5), valid, "layer 0")
    w.add(torch.full((1, 2, 3), float("nan")), torch.zeros(1, 2, 3), valid, "layer 1")
    w.add(torch.zeros(1, 2, 3), torch.full((1, 2, 3), 9.0), valid, "layer 2")
    assert math.isnan(w.err) and w.where == "layer 1: not finite"


def test_check_model_refuses_no_prompts():
    with pytest.raises(InvalidInputError, match="no prompts"):
        check_model(tiny_model("llama"), prompts=[])


def test_top_items_refuses_an_all_nan_result():
    from mechmoe.ops.results import top_items

    ds = xr.Dataset(
        {"score": (("layer", "head"), np.full((2, 3), np.nan))},
        coords={"layer": [0, 1], "head": [0, 1, 2]},
        attrs={"level": "head", "model": "m"},
    )
    with pytest.raises(NonFiniteError, match="no finite score"):
        top_items(ds, 5)


# ---- the command line ---------------------------------------------------------------------
def test_cli_adapters_check_fails(overflowing):
    res = runner.invoke(app, ["adapters", "check", str(overflowing), "--dtype", "float16"])
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output and "not finite" in res.output
    ok = runner.invoke(app, ["adapters", "check", str(overflowing)])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize(
    "args",
    [
        ["attribute", "--probe", "country_capital_city", "--limit", "2", "--level", "head"],
        ["probe", "-r", "country_capital_city", "--limit", "2"],
    ],
)
def test_cli_refuses_instead_of_an_empty_table(overflowing, args, tmp_path):
    out = tmp_path / "r.nc"
    cmd = [args[0], str(overflowing), *args[1:], "--dtype", "float16", "--out", str(out)]
    res = runner.invoke(app, cmd)
    assert res.exit_code == 2, res.output
    assert "layer 1 (FFN)" in res.output and "│" not in res.output
    assert not out.exists()
