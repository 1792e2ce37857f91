from __future__ import annotations

import dataclasses

import pytest

from mechmoe.adapters import NormSpec
from mechmoe.model import Model
from mechmoe.ops.conformance import IDENTITIES, check_model
from mechmoe.testing import TINY_FAMILIES, tiny_hf_model, tiny_model, tiny_tokenizer


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_builtin_adapter_passes_all_identities(family):
    report = check_model(tiny_model(family))
    assert [r.identity for r in report.results] == list(IDENTITIES)
    for r in report.results:
        assert r.passed, f"{family}: {r.identity} off by {r.max_abs_error:.2e} at {r.where}"
    # fp32, tiny weights: logits through the handle are the plain forward's, to 1e-5
    assert report["logits"].max_abs_error <= 1e-5


@pytest.mark.parametrize("family", ["olmoe", "llama"])
def test_last_position_only(family):
    assert check_model(tiny_model(family), positions="last").passed


def test_wrong_norm_kind_fails_unembed():
    hf = tiny_hf_model("llama")
    spec = Model.from_hf(hf, tiny_tokenizer()).spec
    wrong = dataclasses.replace(spec, norm=NormSpec(kind="layernorm", eps=("rms_norm_eps",)))
    report = check_model(Model.from_hf(hf, tiny_tokenizer(), spec=wrong))
    assert not report["unembed"].passed
    assert report["logits"].passed


def test_forgetting_the_shared_expert_fails_experts():
    hf = tiny_hf_model("qwen2_moe")
    spec = Model.from_hf(hf, tiny_tokenizer()).spec
    assert spec.moe is not None
    wrong = dataclasses.replace(
        spec, moe=dataclasses.replace(spec.moe, shared=None, shared_gate=None)
    )
    report = check_model(Model.from_hf(hf, tiny_tokenizer(), spec=wrong))
    assert not report["experts"].passed
    assert report["heads"].passed and report["residual"].passed


def test_missing_post_norm_fails_residual():
    hf = tiny_hf_model("olmo2")
    spec = Model.from_hf(hf, tiny_tokenizer()).spec
    wrong = dataclasses.replace(spec, ffn_out_norm=None)
    assert not check_model(Model.from_hf(hf, tiny_tokenizer(), spec=wrong))["residual"].passed
