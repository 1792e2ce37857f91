"""Top-n listings, saving/reopening, the ``mechmoe attribute`` command, and SmolLM2."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from mechmoe.core.errors import InvalidInputError, OutputError
from mechmoe.ops.attribution import attribute
from mechmoe.ops.results import open_result, promoted_tokens, save_result, top_items
from mechmoe.testing import DEFAULT_PROMPTS, tiny_model

PROMPTS = list(DEFAULT_PROMPTS)


@pytest.fixture(scope="module")
def qwen():
    return tiny_model("qwen2_moe")


def test_top_items_rank_by_mean_score_with_labels(qwen):
    ds = attribute(qwen, PROMPTS, level="neuron")
    items = top_items(ds, 8, model=qwen, n_tokens=3)
    scores = [it.score for it in items]
    assert scores == sorted(scores, reverse=True)
    finite = np.concatenate([ds["score"].values.ravel(), ds["shared_score"].values.ravel()])
    assert scores[0] == pytest.approx(np.nanmax(finite))
    for it in items:
        assert re.fullmatch(r"L\d+ (E\d+ N\d+|N\d+|shared N\d+)", it.label)
        assert len(it.tokens) == 3 and all(isinstance(t, str) for t in it.tokens)
    low = top_items(ds, 3, ascending=True)
    assert low[0].score == pytest.approx(np.nanmin(finite))


def test_promoted_tokens_follow_the_value_vector(qwen):
    import torch

    token = 42
    with torch.no_grad():
        qwen.ffn_weights(0).w_down[3][:, 5] = 50.0 * qwen.W_U[token] / qwen.final_norm.weight
    assert promoted_tokens(qwen, 0, 3, 5, k=1) == [qwen.tokenizer.decode([token])]


def test_head_and_layer_labels():
    model = tiny_model("llama")
    heads = top_items(attribute(model, PROMPTS, level="head"), 2)
    assert all(re.fullmatch(r"L\d+ H\d+", it.label) for it in heads)
    ffn = top_items(attribute(model, PROMPTS, level="ffn"), 5)
    assert len(ffn) == model.dims.n_layers and ffn[0].label.endswith(" ffn")


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_save_and_reopen(qwen, tmp_path, suffix):
    ds = attribute(qwen, PROMPTS, level="expert", per_prompt=True)
    path = save_result(ds, tmp_path / f"r{suffix}")
    back = xr.open_zarr(path) if suffix == ".zarr" else xr.open_dataset(path, engine="h5netcdf")
    np.testing.assert_array_equal(back["score"].values, ds["score"].values)
    np.testing.assert_array_equal(back["score_per_prompt"].values, ds["score_per_prompt"].values)
    assert list(back["prompt"].values) == PROMPTS
    assert back.attrs["model"] == "tiny:qwen2_moe" and back.attrs["reference_compat"] == 0
    # Saving again needs overwrite=True, then replaces the old result.
    with pytest.raises(OutputError, match="--overwrite"):
        save_result(ds.assign(score=ds["score"] * 0), path)
    np.testing.assert_array_equal(open_result(path)["score"].values, ds["score"].values)
    save_result(ds.assign(score=ds["score"] * 0), path, overwrite=True)
    assert float(np.nansum(open_result(path)["score"])) == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"r{suffix}"]


def test_failed_save_leaves_nothing(qwen, tmp_path, monkeypatch):
    ds = attribute(qwen, PROMPTS[:1], level="ffn")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", boom)
    with pytest.raises(RuntimeError):
        save_result(ds, tmp_path / "r.nc")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidInputError, match=r"\.zarr or \.nc"):
        save_result(ds, tmp_path / "r.csv")


# ---- the command ------------------------------------------------------------------------
runner = CliRunner()


def _run(*args):
    from mechmoe.cli import app

    return runner.invoke(app, ["attribute", *map(str, args)], env={"COLUMNS": "160"})


def test_cli_writes_a_result_and_prints_a_table(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("The capital of France is\tParis\nThe opposite of hot is\tcold\n\n")
    out = tmp_path / "res.nc"
    res = _run(
        "tiny:olmoe",
        "--prompts",
        prompts,
        "--level",
        "neuron",
        "--target",
        "gold",
        "--top",
        "4",
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    assert "top 4 neuron scores" in res.output and "promotes" in res.output
    assert re.search(r"L\d E\d N\d+", res.output)
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds.attrs["target_mode"] == "gold" and ds.sizes["prompt"] == 2


def test_cli_layer_level_and_lre_json(tmp_path):
    rel = {
        "name": "capitals",
        "prompt_templates": ["The capital of {} is"],
        "properties": {"relation_type": "factual"},
        "samples": [
            {"subject": "France", "object": "Paris"},
            {"subject": "Japan", "object": "Tokyo"},
        ],
    }
    path = tmp_path / "capitals.json"
    path.write_text(json.dumps(rel))
    out = tmp_path / "res.zarr"
    res = _run(
        "tiny:qwen2_moe", "--prompts", path, "--level", "layer", "--target", "gold", "-o", out
    )
    assert res.exit_code == 0, res.output
    ds = xr.open_zarr(out)
    assert ds["score"].dims == ("sublayer", "layer") and list(ds["sublayer"].values) == [
        "attn",
        "ffn",
    ]
    # what the Python API computes for the same prompts
    from mechmoe.probes import gold_token_ids, load_probe

    model = tiny_model("qwen2_moe")
    probe = load_probe(str(path))
    targets = gold_token_ids(model.tokenizer, probe.object_sets, probe.prompts)
    ref = attribute(model, list(probe.prompts), level="layer", target="gold", targets=targets)
    np.testing.assert_array_equal(ds["score"].values, ref["score"].values)
    assert "L0 attn" in res.output or "L1 attn" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tiny:llama", "--prompts", "{p}", "--level", "expert"], "needs a MoE model"),
        (["tiny:olmoe", "--prompts", "{p}", "--target", "gold"], "needs gold objects"),
        (["tiny:olmoe", "--prompts", "{p}", "--level", "cells"], "--level 'cells'"),
        (["tiny:olmoe", "--prompts", "{p}", "--out", "{d}/r.csv"], ".zarr or .nc"),
        (["tiny:olmoe", "--prompts", "{d}/missing.txt"], "does not exist"),
        (["tiny:olmoe"], "exactly one of --prompts"),
        (["tiny:olmoe", "--prompts", "{e}"], "line 2 .* empty prompt"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, args, message):
    p = tmp_path / "p.txt"
    p.write_text("The capital of France is\n")
    e = tmp_path / "e.txt"
    e.write_text("one\n\nthree\n")
    filled = [a.format(p=p, d=tmp_path, e=e) for a in args]
    res = _run(*filled)
    assert res.exit_code == 2, res.output
    assert re.search(message, res.output.replace("\n", " ")), res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "r.csv").exists()


def test_cli_mid_run_failure_leaves_no_output(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("The capital of France is\n" + "word " * 300 + "\n")  # 2nd prompt too long
    out = tmp_path / "r.nc"
    res = _run("tiny:olmoe", "--prompts", p, "--out", out)
    assert res.exit_code == 2 and "prompt 1" in res.output
    assert list(tmp_path.iterdir()) == [p]


# ---- real weights -------------------------------------------------------------------------
@pytest.mark.real_weights
def test_smollm2_neurons_for_the_capital_of_france(smollm2):
    ds = attribute(smollm2, ["The capital of France is"], level="neuron")
    assert smollm2.tokenizer.decode([int(ds["target"][0])]) == " Paris"
    items = top_items(ds, 10, model=smollm2)
    assert items[0].score > 0.05  # the top neuron raises log p(" Paris") noticeably
    assert all(it.layer is not None and it.layer >= 10 for it in items[:3])  # late layers
    ffn = attribute(smollm2, ["The capital of France is"], level="ffn")
    assert float(ffn["score"].max()) > 0.5
