"""Models whose weights do not match their config, or are not finite, are refused.

Tiny checkpoints are saved, then edited as real accidents leave them: a layer's tensors
gone (a config with more layers than the file), the router weight gone, a layer too many
in the file, a tensor of another shape, NaN or infinite values in a layer.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import mechmoe
from mechmoe.cli import app
from mechmoe.core.errors import DamagedFileError, InvalidInputError, InvalidTypeError
from mechmoe.core.provenance import provenance
from mechmoe.model import LoadOptions
from mechmoe.testing import save_tiny

runner = CliRunner()
ROUTER = "model.layers.0.mlp.gate.weight"
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def _drop_layer(sd):
    return {k: v for k, v in sd.items() if ".layers.1." not in k}


def _drop_router(sd):
    return {k: v for k, v in sd.items() if k != ROUTER}


def _wrong_shape(sd):
    return {**sd, Q_PROJ: sd[Q_PROJ][:-1].clone()}


def _poison(value, *names):
    def edit(sd):
        sd = dict(sd)
        for name in names:
            t = sd[name].clone()
            t.view(-1)[3] = value
            sd[name] = t
        return sd

    return edit


def _one_layer(config):
    config["num_hidden_layers"] = 1


#: name → (edit of the state dict, edit of the config, what the one-line error says)
BROKEN = {
    "layer missing": (
        _drop_layer,
        None,
        r"missing from the file: model\.layers\.1\.\* \(\d+ tensors\)",
    ),
    "router missing": (_drop_router, None, rf"missing from the file: {ROUTER}\)"),
    "layer unexpected": (
        None,
        _one_layer,
        r"in the file but not in the model: model\.layers\.1\.\*",
    ),
    "wrong shape": (_wrong_shape, None, rf"of another shape: {Q_PROJ} \(file 63×64, model 64×64\)"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    base = save_tiny("olmoe", root / "base", seed=0)
    sd = load_file(base / "model.safetensors")
    made = {"base": base}
    cases = {k: v[:2] for k, v in BROKEN.items()}
    cases["nan"] = (_poison(float("nan"), "model.layers.1.mlp.experts.5.up_proj.weight"), None)
    cases["inf"] = (_poison(float("inf"), "model.layers.0.self_attn.o_proj.weight"), None)
    cases["nan many"] = (
        _poison(float("nan"), "model.layers.1.self_attn.k_proj.weight", "lm_head.weight", ROUTER),
        None,
    )
    for name, (edit_sd, edit_config) in cases.items():
        folder = root / name.replace(" ", "_")
        shutil.copytree(base, folder)
        save_file(edit_sd(sd) if edit_sd else sd, folder / "model.safetensors", {"format": "pt"})
        if edit_config:
            config = json.loads((folder / "config.json").read_text())
            edit_config(config)
            (folder / "config.json").write_text(json.dumps(config))
        made[name] = folder
    return made


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_mismatched_weights_refused_in_one_line(folders, case):
    with pytest.raises(DamagedFileError, match=BROKEN[case][2]) as err:
        mechmoe.load(folders[case])
    message = str(err.value)
    assert "\n" not in message and "refusing" in message
    assert "another checkpoint" in message and "--allow-missing-weights" in message


def test_the_untouched_checkpoint_loads(folders):
    model = mechmoe.load(folders["base"])
    assert model.weights_report is None
    assert "weights_report" not in provenance(model)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_allow_missing_weights_loads_warns_and_records(folders, case):
    with pytest.warns(UserWarning, match="do not match its config.*allow_missing_weights"):
        model = mechmoe.load(folders[case], allow_missing_weights=True)
    report = model.weights_report
    assert report is not None and sum(map(len, report.values())) > 0
    attrs = provenance(model)
    assert json.loads(attrs["load_options"])["allow_missing_weights"] is True
    assert json.loads(attrs["weights_report"]) == report
    if case == "router missing":
        assert report == {"missing": [ROUTER], "unexpected": [], "mismatched": []}
        # the router really is not the file's: loading did not invent its values
        base = mechmoe.load(folders["base"])
        assert not torch.equal(model.hf.get_parameter(ROUTER), base.hf.get_parameter(ROUTER))
        attribution = mechmoe.attribute(model, ["The capital of France is"], level="expert")
        assert json.loads(attribution.attrs["weights_report"]) == report


def test_allow_missing_weights_is_for_loaded_models():
    with pytest.raises(InvalidInputError, match="allow_missing_weights applies to models"):
        mechmoe.load("tiny:olmoe", allow_missing_weights=True)
    with pytest.raises(InvalidTypeError, match="allow_missing_weights= takes True or False"):
        LoadOptions(allow_missing_weights="yes")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("nan", r"NaN in model\.layers\.1\.mlp\.experts\.gate_up_proj;"),
        ("inf", r"infinite values in model\.layers\.0\.self_attn\.o_proj\.weight;"),
        (
            "nan many",
            rf"NaN in {ROUTER} \(and 2 more tensors: lm_head\.weight, "
            r"model\.layers\.1\.self_attn\.k_proj\.weight\)",
        ),
    ],
)
def test_non_finite_weights_refused_naming_the_first(folders, case, expected):
    with pytest.raises(DamagedFileError, match=expected) as err:
        mechmoe.load(folders[case])
    assert "\n" not in str(err.value)
    # allowing missing weights does not allow NaN
    with pytest.raises(DamagedFileError, match="NaN|infinite"):
        mechmoe.load(folders[case], allow_missing_weights=True)


def test_non_finite_model_built_by_the_caller_refused():
    from mechmoe.testing import tiny_hf_model, tiny_tokenizer

    hf = tiny_hf_model("llama")
    with torch.no_grad():
        hf.model.layers[1].mlp.down_proj.weight[2, 2] = float("nan")
    with pytest.raises(DamagedFileError, match=r"NaN in model\.layers\.1\.mlp\.down_proj\.weight"):
        mechmoe.load(hf, tokenizer=tiny_tokenizer())


# ---- the command line ---------------------------------------------------------------------
def _cli(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner.invoke(app, list(args))


@pytest.mark.parametrize("command", ["attribute", "probe"])
@pytest.mark.parametrize("case", ["router missing", "layer unexpected", "nan"])
def test_cli_refuses_before_any_work(folders, command, case, tmp_path):
    out = tmp_path / "r.nc"
    probe = (
        ["--probe", "country_capital_city"]
        if command == "attribute"
        else ["-r", "country_capital_city"]
    )
    res = _cli(command, str(folders[case]), *probe, "--limit", "2", "--out", str(out))
    assert res.exit_code == 2, res.output
    assert "refusing" in res.output and "│" not in res.output  # no table
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_allow_missing_weights(folders, tmp_path):
    out = tmp_path / "r.nc"
    res = _cli(
        "attribute",
        str(folders["router missing"]),
        "--probe",
        "country_capital_city",
        "--limit",
        "2",
        "--level",
        "expert",
        "--allow-missing-weights",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    from mechmoe.ops.results import open_result

    ds = open_result(out)
    assert json.loads(ds.attrs["load_options"])["allow_missing_weights"] is True
    assert json.loads(ds.attrs["weights_report"])["missing"] == [ROUTER]


def test_sweep_records_the_broken_checkpoint_as_failed(folders, tmp_path):
    from mechmoe.trajectory import LocalCheckpoints, open_store, sweep
    from mechmoe.trajectory.sweep import ParameterNorm

    root = tmp_path / "ckpts"
    root.mkdir()
    shutil.copytree(folders["base"], root / "step_000100")
    shutil.copytree(folders["layer missing"], root / "step_000200")
    shutil.copytree(folders["nan"], root / "step_000300")
    base = dict(probe=["The capital of France is"], measures=[ParameterNorm()])
    summary = sweep(LocalCheckpoints(root), out=tmp_path / "run.zarr", **base)
    assert summary.done == [100] and sorted(summary.failed) == [200, 300]
    assert "missing from the file: model.layers.1.*" in summary.failed[200]
    assert "NaN in model.layers.1" in summary.failed[300]
    # allowed, the partly random checkpoint is measured and its record says so; NaN is not
    with pytest.warns(UserWarning, match="allow_missing_weights asks"):
        allowed = sweep(
            LocalCheckpoints(root),
            out=tmp_path / "allowed.zarr",
            allow_missing_weights=True,
            **base,
        )
    assert allowed.done == [100, 200] and sorted(allowed.failed) == [300]
    ds = open_store(tmp_path / "allowed.zarr")
    assert json.loads(ds.attrs["load_options"])["allow_missing_weights"] is True
    # the command line: the option reaches the sweep; the NaN checkpoint fails (exit 1)
    args = ["trajectory", "tiny", "--checkpoints", str(root), "--probe", "country_capital_city"]
    args += ["--probe-items", "2", "--measures", "hit", "--out", str(tmp_path / "cli.zarr")]
    res = _cli(*args)
    assert res.exit_code == 1 and "refusing" in res.output, res.output
    assert open_store(tmp_path / "cli.zarr")["step"].values.tolist() == [100]
    res = _cli(*args, "--allow-missing-weights")
    assert res.exit_code == 1, res.output
    assert open_store(tmp_path / "cli.zarr")["step"].values.tolist() == [100, 200]
