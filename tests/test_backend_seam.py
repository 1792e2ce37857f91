"""The backend seam: the registry, named model sources, the curated namespace, and a
third backend (examples/hooks_backend.py, plain PyTorch hooks) checked against nnsight."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mechmoe
from mechmoe.backends import base
from mechmoe.core.errors import InvalidInputError, MechmoeError, ModelNotFoundError
from mechmoe.core.interventions import BanExperts, MaskHeads, ScaleNeurons, SetTopK
from mechmoe.testing import TINY_FAMILIES

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The capital of France is", "Tokyo is a city in Japan and"]


@pytest.fixture(scope="module")
def hooks_backend():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from hooks_backend import HooksBackend
    finally:
        sys.path.remove(str(ROOT / "examples"))
    base.register_backend("hooks", HooksBackend, replace=True)
    yield HooksBackend
    base.unregister_backend("hooks")


def _max_diff(a, b) -> float:
    worst = (a.logits - b.logits).abs().max().item()
    worst = max(worst, (a.final_resid - b.final_resid).abs().max().item())
    for la, lb in zip(a.layers, b.layers, strict=True):
        for field in ("resid_pre", "heads", "attn_out", "resid_mid", "ffn_in", "acts", "ffn_out"):
            diff = (getattr(la, field) - getattr(lb, field)).abs()
            if diff.numel():  # a layer without heads has none to compare
                worst = max(worst, diff.max().item())
        assert torch.equal(la.expert_idx, lb.expert_idx)
        worst = max(worst, (la.expert_gate - lb.expert_gate).abs().max().item())
    return worst


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_hooks_backend_matches_nnsight(family, hooks_backend):
    ref = mechmoe.load(f"tiny:{family}")
    other = mechmoe.load(f"tiny:{family}", backend="hooks")
    assert other.backend == "hooks" and isinstance(other.backend_impl, hooks_backend)
    a0, a1 = ref.dims.attention_layers[:2]  # hybrids: heads only where there is attention
    plans = [None, MaskHeads({a0: [1]}) + MaskHeads({a1: [0, 2]}, mode="mean")]
    if ref.layer_kind(1) == "dense" and ref.layer_kind(0) == "dense":
        plans.append(ScaleNeurons({(1, 0, 3): 2.0, (0, 0, 1): 0.0}))
    for plan in plans:
        a = ref.capture(PROMPTS, positions="all", interventions=plan)
        b = other.capture(PROMPTS, positions="all", interventions=plan)
        assert b.meta["backend"] == "hooks"
        assert _max_diff(a, b) <= 1e-6, (family, plan)


def test_a_backend_lacking_a_site_says_so_before_the_pass(hooks_backend, monkeypatch):
    model = mechmoe.load("tiny:olmoe", backend="hooks")
    ran = []
    monkeypatch.setattr(hooks_backend, "run", lambda *a, **k: ran.append(1))
    with pytest.raises(InvalidInputError, match=r"'hooks' backend cannot edit at site 'router'"):
        model.capture(PROMPTS, interventions=BanExperts({0: [1]}) + SetTopK(3))
    assert not ran


def test_edits_declare_what_they_need():
    assert MaskHeads({0: [1]}).needs == frozenset()
    assert BanExperts({0: [1]}).needs == frozenset()
    assert ScaleNeurons({(0, 0, 1): 2.0}).needs == {"ffn_in", "routing"}
    assert (MaskHeads({0: [1]}) + ScaleNeurons({(0, 0, 1): 2.0})).needs == {"ffn_in", "routing"}


def test_backend_registry_errors():
    with pytest.raises(InvalidInputError, match="did you mean 'nnsight'"):
        mechmoe.load("tiny:llama", backend="nnsigt")
    with pytest.raises(InvalidInputError, match="already registered"):
        base.register_backend("nnsight", base.Backend)
    assert {"nnsight", "transformerlens"} <= set(mechmoe.list_backends())


def test_missing_backend_library_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformer_lens" else real(name, *a),
    )
    with pytest.raises(MechmoeError, match=r"needs transformer_lens.*pip install 'mechmoe\[tl\]'"):
        mechmoe.load("tiny:llama", backend="transformerlens")


def test_backends_from_entry_points(installed, monkeypatch, hooks_backend):
    installed({base.ENTRY_POINT_GROUP: {"viahooks": "hooks_backend:HooksBackend"}})
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    assert base.get_backend("viahooks").__name__ == "HooksBackend"
    installed({base.ENTRY_POINT_GROUP: {"broken": "no_such_module_xyz:Backend"}})
    with pytest.raises(InvalidInputError, match="does not exist"):
        base.get_backend("broken")


def test_named_sources(monkeypatch):
    from mechmoe.zoo.tiny import tiny_hf_model, tiny_tokenizer

    assert {"tiny", "smollm2"} <= set(mechmoe.model.list_sources())
    with pytest.raises(ModelNotFoundError, match="did you mean 'tiny'"):
        mechmoe.load("tinny:olmoe")
    with pytest.raises(InvalidInputError, match="no tiny model 'olmoe3'"):
        mechmoe.load("tiny:olmoe3")
    calls = []
    mechmoe.register_source(
        "mine", lambda arg: calls.append(arg) or (tiny_hf_model("llama"), tiny_tokenizer())
    )
    try:
        model = mechmoe.load("mine:v2", dtype=torch.float64)
        assert calls == ["v2"] and model.name == "mine:v2" and model.dtype == torch.float64
        with pytest.raises(InvalidInputError, match="already registered"):
            mechmoe.register_source("mine", lambda arg: None)
    finally:
        mechmoe.model.unregister_source("mine")


def test_public_namespace_resolves_and_stays_light():
    for name in mechmoe.__all__:
        assert getattr(mechmoe, name) is not None, name
    code = "import sys, mechmoe; print(sorted(m for m in ('torch', 'nnsight', 'transformer_lens') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
