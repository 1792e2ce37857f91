from __future__ import annotations

import dataclasses

import pytest

import mechmoe
from mechmoe.adapters import (
    AdapterSpec,
    DenseMLPSpec,
    NormSpec,
    get_adapter,
    list_adapters,
    registry,
)
from mechmoe.core.errors import SpecMismatchError, UnsupportedArchitectureError
from mechmoe.testing import tiny_hf_model, tiny_tokenizer

BUILTIN = {
    "OlmoeForCausalLM",
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "OlmoForCausalLM",
    "Olmo2ForCausalLM",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "GPT2LMHeadModel",
}


def test_every_builtin_resolves_to_a_spec():
    assert BUILTIN <= set(list_adapters())
    for arch in BUILTIN:
        spec = get_adapter(arch)
        assert arch in spec.architectures


def test_unknown_architecture_lists_supported_and_says_how_to_add():
    with pytest.raises(UnsupportedArchitectureError) as info:
        get_adapter("MambaForCausalLM")
    msg = str(info.value)
    assert "MambaForCausalLM" in msg
    assert "LlamaForCausalLM" in msg and "OlmoeForCausalLM" in msg
    assert "register_adapter" in msg and "docs/adapters.md" in msg


def test_near_miss_gets_did_you_mean():
    with pytest.raises(UnsupportedArchitectureError, match="did you mean 'OlmoeForCausalLM'"):
        get_adapter("OlmoeForCausalLm")


def test_register_rejects_duplicates_and_allows_replace():
    spec = dataclasses.replace(get_adapter("LlamaForCausalLM"), name="llama-copy")
    with pytest.raises(ValueError, match="already registered"):
        mechmoe.register_adapter(spec)
    custom = AdapterSpec(
        name="custom",
        architectures=("CustomForCausalLM",),
        norm=NormSpec(kind="rmsnorm"),
        dense=DenseMLPSpec(),
    )
    try:
        mechmoe.register_adapter(custom)
        assert get_adapter("CustomForCausalLM") is custom
        with pytest.raises(ValueError):
            mechmoe.register_adapter(custom)
        mechmoe.register_adapter(custom, replace=True)
    finally:
        registry.unregister_adapter("CustomForCausalLM")


def test_entry_point_adapters_are_registered(installed):
    installed(
        {"mechmoe.adapters": {"plugin": "mechmoe_plugin_adapter:SPEC"}},
        {
            "mechmoe_plugin_adapter": "from mechmoe.adapters import AdapterSpec, DenseMLPSpec\n"
            "SPEC = AdapterSpec(name='plugin', architectures=('PluginForCausalLM',), "
            "dense=DenseMLPSpec())\n"
        },
    )
    spec = get_adapter("PluginForCausalLM")
    assert spec.name == "plugin" and "PluginForCausalLM" in list_adapters()


def test_spec_needs_an_ffn_and_architectures():
    with pytest.raises(ValueError, match="neither"):
        AdapterSpec(name="x", architectures=("X",))
    with pytest.raises(ValueError, match="no architectures"):
        AdapterSpec(name="x", architectures=(), dense=DenseMLPSpec())


def test_spec_is_frozen():
    spec = get_adapter("LlamaForCausalLM")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.layers = "x"  # type: ignore[misc]


def test_spec_path_that_does_not_resolve_is_named():
    bad = dataclasses.replace(get_adapter("LlamaForCausalLM"), attn_out_proj="self_attn.out_proj")
    with pytest.raises(SpecMismatchError, match=r"self_attn\.out_proj.*layer 0"):
        mechmoe.Model.from_hf(tiny_hf_model("llama"), tiny_tokenizer(), spec=bad)


def test_spec_config_key_missing_is_named():
    bad = dataclasses.replace(get_adapter("LlamaForCausalLM"), n_heads=("n_heads_nope",))
    with pytest.raises(SpecMismatchError, match="n_heads_nope"):
        mechmoe.Model.from_hf(tiny_hf_model("llama"), tiny_tokenizer(), spec=bad)
