"""Every operation gives the same result on every backend, on six tiny model families.

One suite for all backends: each test runs an operation on every backend of
:data:`BACKENDS` for one family and compares the results with the first backend's
(max |diff| <= 1e-5, integer results exactly). Adding a backend to :data:`BACKENDS` puts
it under every test here.

The nnsight models run eager attention. TransformerLens's bridge computes attention with
its own eager code whatever the HF model's setting, and the two backends then run the same
computation (bit-identical on these models); against PyTorch's fused SDPA kernel the
difference is only summation order, up to ~1e-5 on OLMo-2, too close to the tolerance
for a stable check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

import mechmoe
from mechmoe.backends import base
from mechmoe.core.edits import SITES
from mechmoe.core.errors import InvalidInputError, InvalidTypeError
from mechmoe.core.interventions import (
    BanExperts,
    ForceExperts,
    MaskHeads,
    ScaleGates,
    ScaleNeurons,
    SetTopK,
    ZeroExperts,
    ZeroNeurons,
)
from mechmoe.core.types import Capture
from mechmoe.ops.attribution import attribute
from mechmoe.ops.conformance import check_model
from mechmoe.ops.robustness import head_robustness
from mechmoe.probes import evaluate, load_probe
from mechmoe.trajectory import LocalCheckpoints, list_measures, open_store, sweep

pytest.importorskip("transformer_lens", reason="the transformerlens backend needs TransformerLens")

BACKENDS: tuple[str, ...] = ("nnsight", "transformerlens")
FAMILIES: tuple[str, ...] = ("olmoe", "mixtral", "qwen2_moe", "olmo", "olmo2", "llama")
TOL = 1e-5
PROMPTS = [
    "The capital of France is",
    "The opposite of hot is",
    "Tokyo is a city in",
    "A mixture of experts chooses a few experts for every",
]


def _load(family: str, backend: str) -> mechmoe.Model:
    model = mechmoe.load(f"tiny:{family}", backend=backend)
    if backend == "nnsight":
        model.hf.set_attn_implementation("eager")  # see the module docstring
    return model


_MODELS: dict[tuple[str, str], mechmoe.Model] = {}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Run this module's tiny tensors on one thread: on a busy two-core machine OpenMP's
    wait for a second thread makes each tiny op ~1000x slower (60 ms for one index_add_);
    both backends run under the same setting, so the comparison is unchanged."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models() -> Callable[[str], dict[str, mechmoe.Model]]:
    """``models(family)``: one model per backend, built on first use and shared."""

    def get(family: str) -> dict[str, mechmoe.Model]:
        for backend in BACKENDS:
            if (family, backend) not in _MODELS:
                _MODELS[(family, backend)] = _load(family, backend)
        return {b: _MODELS[(family, b)] for b in BACKENDS}

    yield get
    _MODELS.clear()


@pytest.fixture(scope="module")
def probe() -> Any:
    return load_probe("adj_antonym,noun_plural").head(2, per_relation=True)


# ---- comparisons ---------------------------------------------------------------------


def _diff(a: Any, b: Any, what: str) -> float:
    """Max |a − b| (NaN where both are NaN counts as equal); integers must match exactly."""
    if a is None or b is None:
        assert a is None and b is None, f"{what}: present on one backend only"
        return 0.0
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    if not a.is_floating_point():
        assert torch.equal(a, b), f"{what}: integer values differ"
        return 0.0
    both_nan = torch.isnan(a) & torch.isnan(b)
    assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{what}: NaN in different places"
    d = (a - b).abs().masked_fill(both_nan, 0.0)
    return float(d.max()) if d.numel() else 0.0


_FIELDS = (
    "resid_pre",
    "head_z",
    "heads",
    "attn_raw",
    "attn_out",
    "resid_mid",
    "ffn_in",
    "router_logits",
    "expert_idx",
    "expert_gate",
    "acts",
    "shared_acts",
    "shared_gate",
    "ffn_raw",
    "ffn_out",
)


def _capture_diff(a: Capture, b: Capture) -> float:
    """Max |diff| over every captured quantity, at the batch's real (non-pad) positions."""
    valid = a.batch.valid
    worst = 0.0
    for li, (la, lb) in enumerate(zip(a.layers, b.layers, strict=True)):
        assert la.kind == lb.kind
        for f in _FIELDS:
            x, y = getattr(la, f), getattr(lb, f)
            if x is not None and y is not None:
                x, y = x[valid], y[valid]
            worst = max(worst, _diff(x, y, f"layer {li} {f}"))
    worst = max(worst, _diff(a.final_resid[valid], b.final_resid[valid], "final_resid"))
    return max(worst, _diff(a.logits[valid], b.logits[valid], "logits"))


def _dataset_diff(a: xr.Dataset, b: xr.Dataset) -> float:
    assert set(a.data_vars) == set(b.data_vars)
    worst = 0.0
    for name in a.data_vars:
        assert a[name].dims == b[name].dims, name
        if a[name].dtype.kind in "fiub":
            worst = max(worst, _diff(a[name].values, b[name].values, str(name)))
        else:
            assert a[name].values.tolist() == b[name].values.tolist(), name
    return worst


def _same_on_every_backend(results: dict[str, Any], diff: Callable[[Any, Any], float]) -> None:
    first, *rest = BACKENDS
    for other in rest:
        d = diff(results[first], results[other])
        assert d <= TOL, f"{other} differs from {first} by {d:.2e}"


# ---- interventions per family ---------------------------------------------------------


class AddToResidual:
    """A third-party edit at ``resid_pre``: adds a fixed vector to one layer's input."""

    sites = frozenset({"resid_pre"})
    needs: frozenset[str] = frozenset()

    def __init__(self, layer: int, d_model: int) -> None:
        self.layer = layer
        self.vector = torch.linspace(-0.5, 0.5, d_model)

    def validate(self, model: Any) -> None:
        return None

    def apply(self, site: str, layer: int, value: torch.Tensor, ctx: Any) -> Any:
        return value + self.vector if layer == self.layer else None


def _interventions(model: mechmoe.Model) -> dict[str, Any]:
    dims = model.dims
    moe = [la for la in range(dims.n_layers) if model.layer_kind(la) == "moe"]
    dense = [la for la in range(dims.n_layers) if model.layer_kind(la) == "dense"]
    out: dict[str, Any] = {
        "mask_heads": MaskHeads({0: [1, 3], 1: [0]}),
        "mask_heads_mean": MaskHeads({1: [2]}, mode="mean"),
        "resid_pre_edit": AddToResidual(1, dims.d_model),
    }
    if moe:
        la = moe[-1]
        n = dims.n_experts[la]
        out |= {
            "ban": BanExperts({la: [0, n - 1]}),
            "ban+set_topk": BanExperts({la: [0]}) + SetTopK(3),
            "force": ForceExperts({la: [3]}),
            "force3+set_topk3": ForceExperts({la: [0, 1, 2]}) + SetTopK(3),
            "set_topk_all": SetTopK(n),
            "set_topk1": SetTopK(1),
            "scale_gates": ScaleGates({la: {0: 0.5, 1: 2.0, 2: 0.0}}),
            "zero_experts": ZeroExperts({la: [1]}),
            "zero_neurons_moe": ZeroNeurons([(la, 0, 1), (la, 1, 5), (la, 2, 7)]),
            "scale_neurons_moe": ScaleNeurons({(la, 3, 2): 3.0}),
            "mixed": MaskHeads({0: [2]}) + BanExperts({moe[0]: [2]}) + ZeroNeurons([(la, 0, 4)]),
        }
    if dense:
        out["zero_neurons_dense"] = ZeroNeurons([(dense[0], 0, 3), (dense[0], 0, 10)])
        out["scale_neurons_dense"] = ScaleNeurons({(dense[-1], 0, 7): -1.5})
    return out


# ---- the suite -----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("positions", ["last", "all"])
def test_captures_and_interventions_agree(models, family, positions):
    ms = models(family)
    batch = ms[BACKENDS[0]].tokenize(PROMPTS, positions=positions)
    plans = {"none": None, **_interventions(ms[BACKENDS[0]])}
    for name, plan in plans.items():
        caps = {b: m.capture(batch, interventions=plan) for b, m in ms.items()}
        for b, cap in caps.items():
            assert cap.meta["backend"] == b
        try:
            _same_on_every_backend(caps, _capture_diff)
        except AssertionError as err:
            raise AssertionError(f"{family}, {name}: {err}") from None
    if positions == "all":  # the interventions did something: else agreeing proves little
        clean = ms[BACKENDS[-1]].capture(batch)
        for name, plan in plans.items():
            if plan is not None:
                edited = ms[BACKENDS[-1]].capture(batch, interventions=plan)
                change = (edited.logits - clean.logits)[batch.valid].abs().max()
                assert float(change) > 1e-4, f"{family}: {name} changed nothing"


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_agrees_at_every_level(models, family):
    ms = models(family)
    levels = ["neuron", "head", "attn", "ffn"]
    if ms[BACKENDS[0]].dims.is_moe:
        levels.append("expert")
    for level in levels:
        results = {b: attribute(m, PROMPTS, level=level, per_prompt=True) for b, m in ms.items()}
        _same_on_every_backend(results, _dataset_diff)
    # and under an intervention, which the attribution's own capture applies
    plan = MaskHeads({0: [0]})
    results = {b: attribute(m, PROMPTS, level="head", interventions=plan) for b, m in ms.items()}
    _same_on_every_backend(results, _dataset_diff)


@pytest.mark.parametrize("family", FAMILIES)
def test_hit_at_k_agrees(models, family, probe):
    ms = models(family)
    plan = MaskHeads({1: [1, 2]})
    for interventions in (None, plan):
        results = {
            b: evaluate(m, probe, k=10, progress=False, interventions=interventions)
            for b, m in ms.items()
        }
        _same_on_every_backend(results, _dataset_diff)


@pytest.mark.parametrize("family", FAMILIES)
def test_robustness_experiment_agrees(models, family, probe):
    ms = models(family)
    results = {
        b: head_robustness(m, probe, ns=(1, 3), seeds=(0,), k=10, progress=False)
        for b, m in ms.items()
    }
    _same_on_every_backend(results, _dataset_diff)


class _EagerCheckpoints(LocalCheckpoints):
    """Local checkpoints that load the nnsight side with eager attention (module docstring)."""

    def load(self, checkpoint: Any, options: Any = None) -> mechmoe.Model:
        model = super().load(checkpoint, options)
        if options is not None and options.backend == "nnsight":
            model.hf.set_attn_implementation("eager")
        return model


@pytest.mark.parametrize("family", FAMILIES)
def test_trajectory_sweep_agrees(tmp_path, family, probe):
    """Every built-in measure over two checkpoints gives the same store on every backend."""
    from mechmoe.testing import save_tiny

    for step, seed in ((100, 0), (200, 1)):
        save_tiny(family, tmp_path / "ckpts" / f"step{step}", seed=seed)
    stores = {}
    for b in BACKENDS:
        out = tmp_path / f"{b}.zarr"
        source = _EagerCheckpoints(tmp_path / "ckpts")
        summary = sweep(source, probe=probe, measures=list_measures(), out=out, backend=b)
        assert summary.done == [100, 200] and not summary.failed, summary.failed
        stores[b] = open_store(out)
        assert stores[b].attrs["backend"] == b
    first = stores[BACKENDS[0]]
    assert "head_score" in first.data_vars and "hit" in first.data_vars
    for b in BACKENDS[1:]:
        assert first["weights_hash"].values.tolist() == stores[b]["weights_hash"].values.tolist()
    _same_on_every_backend(stores, _dataset_diff)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_conformance_identities_hold(models, family, backend):
    report = check_model(models(family)[backend])
    assert report.passed, [r for r in report.results if not r.passed]


# ---- the seam: sites, optional dependency, wrapping a bridge --------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backend_lacking_a_site_fails_by_name_before_the_pass(backend, request):
    runs: list[int] = []
    full = base.get_backend(backend)

    class NoRouter(full):  # type: ignore[misc, valid-type]
        name = f"{backend}-no-router"
        sites = frozenset(SITES) - {"router"}

        def run(self, batch, edits, ctx):  # type: ignore[no-untyped-def]
            runs.append(1)
            return super().run(batch, edits, ctx)

    base.register_backend(NoRouter.name, NoRouter, replace=True)
    request.addfinalizer(lambda: base.unregister_backend(NoRouter.name))
    model = mechmoe.load("tiny:olmoe", backend=NoRouter.name)
    assert model.capture(PROMPTS[:1]).meta["backend"] == NoRouter.name
    with pytest.raises(
        InvalidInputError, match=rf"'{NoRouter.name}' backend cannot edit at site 'router'"
    ):
        model.capture(PROMPTS[:1], interventions=MaskHeads({0: [0]}) + BanExperts({0: [1]}))
    assert len(runs) == 1  # the refused capture never ran a pass


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pass_keeps_only_what_its_edits_need(models, backend, monkeypatch):
    """A head mask or a routing edit keeps no full-sequence FFN input or routing; a neuron
    edit, which reads both, gets them for every layer it may touch."""
    from mechmoe.core.edits import EditContext

    kept: list[tuple[str, int]] = []
    for need in ("ffn_in", "routing"):
        original = getattr(EditContext, f"record_{need}")

        def spy(self, layer, value, need=need, original=original):  # type: ignore[no-untyped-def]
            kept.append((need, layer))
            return original(self, layer, value)

        monkeypatch.setattr(EditContext, f"record_{need}", spy)
    moe, dense = models("olmoe")[backend], models("llama")[backend]
    for model, plan in (
        (moe, MaskHeads({0: [1]})),
        (moe, BanExperts({1: [0]}) + SetTopK(3)),
        (moe, None),
        (dense, MaskHeads({1: [2]}, mode="mean")),
    ):
        model.capture(PROMPTS, interventions=plan)
        assert kept == [], plan
    moe.capture(PROMPTS, interventions=ScaleNeurons({(1, 2, 3): 2.0}))
    every = range(moe.dims.n_layers)
    assert sorted(kept) == [(need, li) for need in ("ffn_in", "routing") for li in every]
    kept.clear()
    dense.capture(PROMPTS, interventions=ZeroNeurons([(0, 0, 3)]))
    # a dense model has no routing to record
    assert sorted(kept) == [("ffn_in", li) for li in range(dense.dims.n_layers)]


def test_importing_the_backend_does_not_import_transformer_lens():
    import subprocess
    import sys

    code = "import sys, mechmoe.backends.transformerlens; print('transformer_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_bridge_the_user_booted_is_wrapped(tmp_path, models):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechmoe.testing import save_tiny

    folder = save_tiny("olmoe", tmp_path / "olmoe")
    hf = AutoModelForCausalLM.from_pretrained(folder, experts_implementation="eager")
    tok = AutoTokenizer.from_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf, tokenizer=tok)
    model = mechmoe.wrap(bridge, tokenizer=tok)
    assert model.backend_impl.bridge is bridge
    ref = models("olmoe")[BACKENDS[0]]
    batch = ref.tokenize(PROMPTS, positions="all")
    plan = BanExperts({1: [0]}) + SetTopK(3) + MaskHeads({0: [1]})
    for interventions in (None, plan):
        d = _capture_diff(
            ref.capture(batch, interventions=interventions),
            model.capture(batch, interventions=interventions),
        )
        assert d <= TOL


def test_wrapping_refuses_what_is_not_a_plain_bridge(models):
    with pytest.raises(InvalidTypeError, match="TransformerBridge"):
        mechmoe.wrap(models("llama")["nnsight"].hf)
    bridge = models("llama")["transformerlens"].backend_impl.bridge
    bridge.compatibility_mode = True  # the flag enable_compatibility_mode() sets
    try:
        with pytest.raises(InvalidInputError, match="compatibility mode"):
            mechmoe.wrap(bridge)
    finally:
        bridge.compatibility_mode = False
    # an HF model already inside a bridge is not bridged a second time
    bridged = models("llama")["transformerlens"]
    again = mechmoe.load(bridged.hf, tokenizer=bridged.tokenizer, backend="transformerlens")
    with pytest.raises(InvalidInputError, match="already inside a TransformerLens bridge"):
        again.capture(PROMPTS[:1])


def test_experts_out_is_refused_where_the_bridge_cannot_reach_the_routed_experts(monkeypatch):
    """A layer with a shared expert whose routed experts the bridge does not wrap has no
    hook for the routed experts' sum alone: the backend drops the site, so an edit there
    fails by name before the pass (simulated by hiding Qwen2-MoE's experts bridge)."""
    from mechmoe.backends import transformerlens as tl

    real = tl._component
    monkeypatch.setattr(
        tl, "_component", lambda obj: None if getattr(obj, "name", "") == "experts" else real(obj)
    )
    model = mechmoe.load("tiny:qwen2_moe", backend="transformerlens")
    assert "experts_out" not in model.backend_impl.sites
    assert model.capture(PROMPTS[:1], interventions=MaskHeads({0: [0]})).n_layers == 3
    with pytest.raises(InvalidInputError, match="cannot edit at site 'experts_out'"):
        model.capture(PROMPTS[:1], interventions=ZeroNeurons([(0, 1, 2)]))
