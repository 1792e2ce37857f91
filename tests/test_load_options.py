"""LoadOptions: one value for every way of loading a model."""

from __future__ import annotations

import pytest
import torch

import mechmoe
from mechmoe.core.errors import InvalidInputError, InvalidTypeError
from mechmoe.model import LoadOptions


def test_keywords_build_the_same_value_as_options() -> None:
    opts = LoadOptions(dtype="bfloat16", revision="step1")
    assert LoadOptions.build(None, dtype="bfloat16", revision="step1") == opts
    assert LoadOptions.build(opts, revision="step2").revision == "step2"
    assert opts.revision == "step1"  # immutable: build returns a copy


def test_describe_is_json_able() -> None:
    import json

    d = LoadOptions(dtype=torch.bfloat16, device=torch.device("cpu"), tokenizer="tok/").describe()
    assert d["dtype"] == "bfloat16" and d["device"] == "cpu" and d["tokenizer"] == "tok/"
    json.dumps(d)


@pytest.mark.parametrize(
    ("kw", "err", "fragment"),
    [
        ({"tokenizer": 42}, InvalidTypeError, "tokenizer= takes"),
        ({"backend": 3}, InvalidTypeError, "backend= takes"),
        ({"dtype": 1.5}, InvalidTypeError, "dtype= takes"),
        ({"revision": 5}, InvalidTypeError, "revision= takes a string"),
        ({"nonsense": 1}, InvalidTypeError, "unknown load option 'nonsense'"),
        ({"tokenizer": " "}, InvalidInputError, "empty name"),
    ],
)
def test_wrong_options_are_one_clear_error(kw: dict, err: type, fragment: str) -> None:
    with pytest.raises(err, match=fragment):
        mechmoe.load("tiny:olmoe", **kw)


def test_integer_dtype_is_refused_before_loading() -> None:
    with pytest.raises(InvalidInputError, match="cannot hold a model's weights"):
        mechmoe.load("tiny:olmoe", dtype=torch.int8)


def test_options_value_and_keywords_load_the_same_model() -> None:
    a = mechmoe.load("tiny:olmoe", LoadOptions(dtype="float32"))
    b = mechmoe.load("tiny:olmoe", dtype="float32")
    assert a.backend == b.backend == mechmoe.LoadOptions().backend
    for (n, p), (_, q) in zip(a.hf.named_parameters(), b.hf.named_parameters(), strict=True):
        assert torch.equal(p, q), n


# ---- one option added end to end: trust_remote_code ------------------------------------------
CUSTOM_CODE = """
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


class CustomLlamaConfig(LlamaConfig):
    model_type = "custom_llama"


class CustomLlamaForCausalLM(LlamaForCausalLM):
    config_class = CustomLlamaConfig


class CustomTokenizerFast(PreTrainedTokenizerFast):
    pass
"""


def _with_custom_code(folder):
    """Turn a saved tiny Llama into a folder whose config, tokenizer and model are built by
    its own code (``auto_map``), as hub repos with custom modeling files are."""
    import json

    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="custom_llama",
        architectures=["CustomLlamaForCausalLM"],
        auto_map={
            "AutoConfig": "custom_llama.CustomLlamaConfig",
            "AutoModelForCausalLM": "custom_llama.CustomLlamaForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok.update(
        tokenizer_class="CustomTokenizerFast",
        auto_map={"AutoTokenizer": [None, "custom_llama.CustomTokenizerFast"]},
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    (folder / "custom_llama.py").write_text(CUSTOM_CODE)
    return folder


@pytest.fixture
def custom_code(tmp_path, monkeypatch):
    """Two checkpoints with their own modeling code, an adapter for their architecture,
    and transformers' copy of remote code kept in ``tmp_path`` (not the user's cache)."""
    import dataclasses
    import sys

    import transformers.dynamic_module_utils as dynamic

    from mechmoe.adapters import get_adapter, register_adapter, unregister_adapter
    from mechmoe.testing import save_tiny

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for step, seed in ((100, 0), (200, 1)):
        _with_custom_code(save_tiny("llama", tmp_path / "ckpts" / f"step{step}", seed=seed))
    llama = get_adapter("LlamaForCausalLM")
    register_adapter(
        dataclasses.replace(llama, name="custom-llama", architectures=("CustomLlamaForCausalLM",))
    )
    yield tmp_path / "ckpts"
    unregister_adapter("CustomLlamaForCausalLM")
    for name in [m for m in sys.modules if m.startswith("transformers_modules")]:
        del sys.modules[name]


def test_trust_remote_code_reaches_config_tokenizer_and_weights(custom_code, tmp_path):
    from mechmoe.testing import save_tiny

    folder = custom_code / "step100"
    with pytest.raises(InvalidInputError, match="needs its own code to load.*--trust-remote-code"):
        mechmoe.load(folder)
    model = mechmoe.load(folder, trust_remote_code=True)
    assert type(model.hf.config).__name__ == "CustomLlamaConfig"
    assert type(model.tokenizer).__name__ == "CustomTokenizerFast"
    assert type(model.hf).__name__ == "CustomLlamaForCausalLM"
    assert model.load_options == LoadOptions(trust_remote_code=True)
    # the custom code is the Llama code: the same weights give the same logits
    plain = mechmoe.load(save_tiny("llama", tmp_path / "plain", seed=0))
    prompts = ["The capital of France is"]
    assert torch.equal(model.capture(prompts).logits, plain.capture(prompts).logits)
    # a tokenizer named separately is loaded with the option too
    tok = mechmoe.load(folder, tokenizer=folder, trust_remote_code=True).tokenizer
    assert type(tok).__name__ == "CustomTokenizerFast"


def test_trust_remote_code_through_a_sweep_with_no_keyword_threaded(custom_code, tmp_path):
    """The sweep never names the option: its keywords build the LoadOptions, which reaches
    ``load`` whole, and every checkpoint's record keeps it."""
    import json

    from mechmoe.trajectory import LocalCheckpoints, sweep
    from mechmoe.trajectory.sweep import ParameterNorm

    base = dict(probe=["The capital of France is"], measures=[ParameterNorm()])
    refused = sweep(LocalCheckpoints(custom_code), out=tmp_path / "refused.zarr", **base)
    assert sorted(refused.failed) == [100, 200]
    assert all("--trust-remote-code" in e for e in refused.failed.values())
    done = sweep(
        LocalCheckpoints(custom_code), out=tmp_path / "run.zarr", trust_remote_code=True, **base
    )
    assert done.done == [100, 200] and not done.failed
    ds = mechmoe.open_store(tmp_path / "run.zarr")
    recorded = json.loads(ds.attrs["load_options"])
    assert recorded == {**LoadOptions(trust_remote_code=True).describe(), "revision": None}


# ---- options passed whole --------------------------------------------------------------------
def test_sweep_takes_the_options_value_or_keywords_alike(tmp_path):
    import json

    from mechmoe.testing import save_tiny
    from mechmoe.trajectory import LocalCheckpoints, sweep
    from mechmoe.trajectory.sweep import ParameterNorm

    save_tiny("llama", tmp_path / "ckpts" / "step100")
    tok = str(tmp_path / "ckpts" / "step100")
    base = dict(probe=["The capital of France is"], measures=[ParameterNorm()])
    source = LocalCheckpoints(tmp_path / "ckpts")
    sweep(source, out=tmp_path / "kw.zarr", dtype="bfloat16", tokenizer=tok, **base)
    opts = LoadOptions(dtype="bfloat16", tokenizer=tok)
    sweep(source, out=tmp_path / "opts.zarr", options=opts, **base)
    a, b = (mechmoe.open_store(tmp_path / f"{n}.zarr") for n in ("kw", "opts"))
    assert a.identical(b)
    config = json.loads(a.attrs["config"])
    assert config["dtype"] == "bfloat16" and config["tokenizer"] == tok
    assert json.loads(a.attrs["load_options"])["dtype"] == "bfloat16"
    with pytest.raises(InvalidInputError, match="made with dtype=.* but this run has dtype="):
        sweep(source, out=tmp_path / "kw.zarr", options=opts.replace(dtype="float32"), **base)


def test_a_store_written_by_the_previous_version_resumes(tmp_path):
    """tests/data/store-written-by-9f69ee2 was written by mechmoe at 9f69ee2 (before load
    options were one value): ``sweep(LocalCheckpoints(ckpts, select="100"), probe=[PROMPT],
    measures=[ParameterNorm()], tokenizer=<step100>)`` on ``save_tiny("llama", seed=0/1)``
    checkpoints. Its config keys are what this version writes, so it resumes; its zarr v2
    parts are upgraded in place (checksums recorded, the plain-xarray root written)."""
    import json
    import shutil
    from pathlib import Path

    from mechmoe.testing import save_tiny
    from mechmoe.trajectory import LocalCheckpoints, sweep
    from mechmoe.trajectory.store import FORMAT
    from mechmoe.trajectory.sweep import ParameterNorm, run_config

    old = Path(__file__).parent / "data" / "store-written-by-9f69ee2"
    ckpts = tmp_path / "ckpts"
    for step, seed in ((100, 0), (200, 1)):
        save_tiny("llama", ckpts / f"step{step}", seed=seed)
    store = tmp_path / "run.zarr"
    shutil.copytree(old, store)
    # the old store names the folders it was made from; point them here
    config = json.loads((store / "config.json").read_text())
    config["source"]["path"] = str(ckpts.resolve())
    config["tokenizer"] = str((ckpts / "step100").resolve())
    (store / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    source = LocalCheckpoints(ckpts)
    probe = ["The capital of France is"]
    opts = LoadOptions(tokenizer=config["tokenizer"])
    new = run_config(source, name=None, probe=probe, probe_label="prompts", options=opts)
    assert {"format": config["format"], **new} == config
    summary = sweep(
        source, probe=probe, measures=[ParameterNorm()], out=store, tokenizer=config["tokenizer"]
    )
    assert summary.skipped == [100] and summary.done == [200] and not summary.failed
    assert mechmoe.open_store(store)["param_norm"].sizes["step"] == 2
    # upgraded in place (checksums, the root): plain xarray reads what open_store reads
    import xarray as xr

    assert json.loads((store / "config.json").read_text())["format"] == FORMAT
    assert xr.open_zarr(store).load().identical(mechmoe.open_store(store).load())


def test_results_record_the_load_options():
    import json

    model = mechmoe.load("tiny:olmoe", dtype="bfloat16", attn_implementation="eager")
    ds = mechmoe.attribute(model, ["The capital of France is"], level="ffn")
    recorded = json.loads(ds.attrs["load_options"])
    assert recorded == model.load_options.describe()
    assert recorded["dtype"] == "bfloat16" and recorded["attn_implementation"] == "eager"


def test_checkpoint_decides_its_revision():
    from mechmoe.trajectory import Checkpoint

    ckpt = Checkpoint(step=1, repo="org/model", revision="step1", label="step1")
    with pytest.raises(InvalidInputError, match="is its own revision; drop revision='main'"):
        ckpt.load(LoadOptions(revision="main"))


def test_demo_options_choose_the_cache_folder_and_are_checked_before_training(tmp_path):
    from mechmoe.study.demo import DemoConfig, demo_dir, run_demo

    cfg = DemoConfig()
    default = demo_dir(cfg, tmp_path)
    assert default.name == mechmoe.LoadOptions().backend
    assert demo_dir(cfg, tmp_path, LoadOptions()) == default
    assert demo_dir(cfg, tmp_path, "transformerlens").name == "transformerlens"
    other = demo_dir(cfg, tmp_path, LoadOptions(dtype="bfloat16"))
    assert other.parent == default.parent and other.name.startswith(default.name + "-")
    for bad in (dict(revision="step1"), dict(tokenizer="tiny:llama")):
        with pytest.raises(InvalidInputError, match="drop"):
            run_demo(cfg, root=tmp_path, workers=1, **bad)
    assert not (tmp_path / "zoo").exists()


def test_wrap_goes_through_the_backend_interface():
    from mechmoe.testing import tiny_hf_model

    with pytest.raises(InvalidTypeError, match="TransformerBridge.*got a LlamaForCausalLM"):
        mechmoe.wrap(tiny_hf_model("llama"))
    with pytest.raises(InvalidInputError, match="the 'nnsight' backend cannot wrap"):
        mechmoe.wrap(tiny_hf_model("llama"), backend="nnsight")
