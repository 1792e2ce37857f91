from __future__ import annotations

import json

import pytest
import torch

import mechmoe
from mechmoe.core.errors import InvalidInputError, ModelNotFoundError, UnsupportedArchitectureError
from mechmoe.testing import make_hub_cache, save_tiny, tiny_model


def _logits(model, prompt="The capital of France is"):
    return model.capture([prompt]).logits


@pytest.mark.parametrize("family", ["olmoe", "gpt2"])
def test_local_folder_round_trip(tmp_path, family):
    folder = save_tiny(family, tmp_path / family)
    loaded = mechmoe.load(folder)
    assert loaded.spec.name == family
    torch.testing.assert_close(_logits(loaded), _logits(tiny_model(family)), atol=1e-6, rtol=0)


def test_hub_revisions_resolve_offline(tmp_path, monkeypatch):
    a = save_tiny("olmoe", tmp_path / "a", seed=1)
    b = save_tiny("olmoe", tmp_path / "b", seed=2)
    cache = tmp_path / "hub"
    make_hub_cache(cache, "allenai/tiny-olmoe", {"main": a, "step1000-tokens4B": b})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    main = mechmoe.load("allenai/tiny-olmoe")
    step = mechmoe.load("allenai/tiny-olmoe", revision="step1000-tokens4B")
    assert step.revision == "step1000-tokens4B"
    torch.testing.assert_close(
        _logits(main), _logits(tiny_model("olmoe", seed=1)), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        _logits(step), _logits(tiny_model("olmoe", seed=2)), atol=1e-6, rtol=0
    )
    with pytest.raises(ModelNotFoundError, match="step9-tokens0B.*main, step1000-tokens4B"):
        mechmoe.load("allenai/tiny-olmoe", revision="step9-tokens0B")
    with pytest.raises(ModelNotFoundError, match="nobody/nothing"):
        mechmoe.load("nobody/nothing")


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        mechmoe.load(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        mechmoe.load(str(tmp_path / "model.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        mechmoe.load(tmp_path / "empty")


def test_revision_on_local_folder_is_refused(tmp_path):
    folder = save_tiny("llama", tmp_path / "m")
    with pytest.raises(InvalidInputError, match="local folder"):
        mechmoe.load(folder, revision="step1")


def test_unsupported_architecture_fails_before_weights(tmp_path):
    folder = save_tiny("llama", tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["MambaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").unlink()  # would fail loudly if weights were read
    with pytest.raises(
        UnsupportedArchitectureError, match="MambaForCausalLM.*known: .*LlamaForCausalLM"
    ):
        mechmoe.load(folder)


def test_wrap_a_built_model():
    from mechmoe.testing import tiny_hf_model, tiny_tokenizer

    model = mechmoe.load(tiny_hf_model("mixtral"), tokenizer=tiny_tokenizer())
    assert model.spec.name == "mixtral"
    with pytest.raises(InvalidInputError, match="tokenizer"):
        mechmoe.load(tiny_hf_model("mixtral"))


def test_bad_options():
    with pytest.raises(InvalidInputError, match="dtype"):
        mechmoe.load("tiny:llama", dtype="float8")
    with pytest.raises(InvalidInputError, match="not exact"):
        mechmoe.load("tiny:olmoe", experts_implementation="batched_mm")
    with pytest.raises(InvalidInputError, match="no tiny model"):
        mechmoe.load("tiny:bert")


def test_repr_and_dims():
    model = mechmoe.load("tiny:olmoe")
    assert "adapter=olmoe" in repr(model) and "experts=8" in repr(model)
    assert model.dims.is_moe and model.dims.top_k == (2, 2)
