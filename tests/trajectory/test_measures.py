"""Measures: the protocol, the registry, and every built-in against the op it wraps."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from mechmoe.core.errors import InvalidInputError
from mechmoe.core.provenance import probe_hash, weights_hash
from mechmoe.ops.attribution import attribute
from mechmoe.ops.robustness import head_robustness
from mechmoe.probes import evaluate, load_probe, summarize
from mechmoe.testing import tiny_model
from mechmoe.trajectory.measures import (
    DEFAULT_MEASURES,
    Measure,
    get_measure,
    list_measures,
    register_measure,
    unregister_measure,
)

BUILTINS = (
    "neuron_lpi",
    "expert_lpi",
    "head_lpi",
    "layer_lpi",
    "hit",
    "robustness",
    "expert_load",
    "routing",
)

# The store layout (docs/trajectories.md), without the step dim: variable -> dims.
LAYOUT: dict[str, tuple[str, ...]] = {
    "neuron_score": ("layer", "expert", "neuron"),
    "neuron_n_chosen": ("layer", "expert"),
    "expert_score": ("layer", "expert"),
    "expert_n_chosen": ("layer", "expert"),
    "head_score": ("layer", "head"),
    "attn_score": ("layer",),
    "ffn_score": ("layer",),
    "hit": ("relation", "k"),
    "mrr": ("relation",),
    "robust_hit_base": (),
    "robust_hit_top": ("n",),
    "robust_hit_random": ("n", "seed"),
    "robust_drop_top": ("n",),
    "robust_drop_random": ("n", "seed"),
    "expert_load": ("layer", "expert"),
    "routing_choice": ("token", "layer", "slot"),
}


@pytest.fixture(scope="module")
def olmoe():
    return tiny_model("olmoe")


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def probe():
    return load_probe("adj_antonym,noun_plural").head(2, per_relation=True)


def _check_layout(measure: Measure, ds: xr.Dataset, model: Any, probe: Any) -> None:
    assert set(ds.data_vars) == set(measure.variables)
    for name in measure.variables:
        assert ds[name].dims == LAYOUT[name], name
    assert "step" not in ds.dims
    for dim in ds.dims:
        assert dim in ds.coords, dim
    if "layer" in ds.dims:
        assert ds["layer"].values.tolist() == list(range(model.dims.n_layers))
    assert ds.attrs["measure"] == measure.name
    assert ds.attrs["probe_hash"] == probe_hash(probe)
    assert ds.attrs["weights_hash"] == weights_hash(model)
    assert all(isinstance(v, (str, int, float)) for v in ds.attrs.values())


# ---- registry ----------------------------------------------------------------------------
def test_builtins_are_registered_in_order():
    assert DEFAULT_MEASURES == BUILTINS
    assert list_measures()[: len(BUILTINS)] == list(BUILTINS)
    for name in BUILTINS:
        m = get_measure(name)
        assert isinstance(m, Measure) and m.name == name
        assert set(m.variables) <= set(LAYOUT)
        assert isinstance(m.config(), dict)
    covered = {v for name in BUILTINS for v in get_measure(name).variables}
    assert covered == set(LAYOUT)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(InvalidInputError, match="did you mean 'neuron_lpi'"):
        get_measure("neuron_lp")
    with pytest.raises(InvalidInputError, match="unknown measure 'zzz'"):
        get_measure("zzz")


def test_bad_options_raise_one_line():
    with pytest.raises(InvalidInputError, match="'hit' has no option 'kz' \\(did you mean 'ks'"):
        get_measure("hit", kz=(1, 5))
    with pytest.raises(InvalidInputError, match="target='best'"):
        get_measure("neuron_lpi", target="best")
    with pytest.raises(InvalidInputError, match="ks"):
        get_measure("hit", ks=(0, 10))
    with pytest.raises(InvalidInputError, match="seeds"):
        get_measure("robustness", seeds=(1, 1))
    # options are normalised, so equal configs compare equal
    assert get_measure("hit", ks=[10, 1, 10]).config() == {"ks": [1, 10], "batch_size": 32}
    assert get_measure("robustness", ns=5).config()["ns"] == [5]


def test_duplicate_registration_raises_and_replace_works():
    @dataclasses.dataclass(frozen=True)
    class Dummy:
        name = "dummy_measure"
        variables = ("dummy",)

        def applies_to(self, model):
            return True

        def config(self):
            return {}

        def __call__(self, model, probe):
            return xr.Dataset({"dummy": ((), 1.0)})

    try:
        register_measure("dummy_measure", Dummy)
        with pytest.raises(ValueError, match="already registered"):
            register_measure("dummy_measure", Dummy)
        with pytest.raises(ValueError, match="already registered"):
            register_measure("hit", Dummy)
        register_measure("dummy_measure", Dummy, replace=True)
        assert "dummy_measure" in list_measures()
        assert isinstance(get_measure("dummy_measure"), Dummy)
        with pytest.raises(InvalidInputError, match="no option 'x'; its options: none"):
            get_measure("dummy_measure", x=1)
    finally:
        unregister_measure("dummy_measure")
    assert "dummy_measure" not in list_measures()


def test_a_factory_must_build_a_measure_of_its_name():
    try:
        register_measure("not_a_measure", lambda: object())
        with pytest.raises(TypeError, match="lacks the Measure protocol"):
            get_measure("not_a_measure")
        register_measure("misnamed", lambda: get_measure("hit"))
        with pytest.raises(TypeError, match="calls itself 'hit'"):
            get_measure("misnamed")
    finally:
        unregister_measure("not_a_measure")
        unregister_measure("misnamed")


def test_entry_points_are_loaded(installed):
    import sys

    installed(
        {"mechmoe.measures": {"residual_norm": "mechmoe_plugin_measure:ResidualNorm"}},
        {"mechmoe_plugin_measure": f"from {__name__} import ResidualNorm\n"},
    )
    assert list_measures()[-1] == "residual_norm"
    assert "mechmoe_plugin_measure" not in sys.modules  # listed by name, not imported
    assert get_measure("residual_norm", scale=2.0).config()["scale"] == 2.0
    assert "mechmoe_plugin_measure" in sys.modules


# ---- a third-party measure (the worked example of docs/measures.md) ---------------------------
@dataclasses.dataclass(frozen=True)
class ResidualNorm:
    """Mean L2 norm of the residual stream entering each layer, at the last prompt token."""

    scale: float = 1.0
    batch_size: int = 16

    name = "residual_norm"
    variables = ("residual_norm",)

    def applies_to(self, model) -> bool:
        return True

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __call__(self, model, probe) -> xr.Dataset:
        from mechmoe.core.provenance import provenance

        prompts = list(probe.prompts)
        total = np.zeros(model.dims.n_layers)
        for start in range(0, len(prompts), self.batch_size):
            cap = model.capture(prompts[start : start + self.batch_size])  # last token
            for layer, lc in enumerate(cap.layers):
                total[layer] += lc.resid_pre[:, 0].norm(dim=-1).sum().item()
        return xr.Dataset(
            {"residual_norm": (("layer",), self.scale * total / len(prompts))},
            coords={"layer": np.arange(model.dims.n_layers)},
            attrs=provenance(model, probe=probe, options=self.config(), measure=self.name),
        )


def test_third_party_measure_end_to_end(llama, probe):
    try:
        register_measure("residual_norm", ResidualNorm)
        measure = get_measure("residual_norm", batch_size=3)
        assert isinstance(measure, Measure) and measure.applies_to(llama)
        ds = measure(llama, probe)
    finally:
        unregister_measure("residual_norm")
    assert ds["residual_norm"].dims == ("layer",) and ds.attrs["batch_size"] == 3
    # independently: plain HF forwards, one prompt at a time (no padding)
    want = np.zeros(llama.dims.n_layers)
    with torch.no_grad():
        for prompt in probe.prompts:
            ids = llama.tokenizer(prompt, return_tensors="pt")["input_ids"]
            hidden = llama.hf(input_ids=ids, output_hidden_states=True).hidden_states
            for layer in range(llama.dims.n_layers):
                want[layer] += hidden[layer][0, -1].norm().item()
    np.testing.assert_allclose(ds["residual_norm"].values, want / len(probe), rtol=1e-5)


# ---- the LPI measures ----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["olmoe", "llama"])
def test_neuron_lpi_is_the_attribution_with_unchosen_as_zero(family, olmoe, llama, probe):
    model = olmoe if family == "olmoe" else llama
    measure = get_measure("neuron_lpi", batch_size=3)
    ds = measure(model, probe)
    _check_layout(measure, ds, model, probe)
    ref = attribute(model, list(probe.prompts), level="neuron", batch_size=3)
    assert ds["neuron_score"].notnull().all()
    np.testing.assert_array_equal(ds["neuron_score"].values, ref["score"].fillna(0).values)
    np.testing.assert_array_equal(ds["neuron_n_chosen"].values, ref["n_chosen"].values)
    if family == "llama":
        assert ds.sizes["expert"] == 1 and ds["expert"].values.tolist() == [0]
        assert (ds["neuron_n_chosen"] == len(probe)).all()
    else:
        assert ds.sizes["expert"] == 8
        # every prompt chooses top_k experts per layer
        assert (ds["neuron_n_chosen"].sum("expert") == 2 * len(probe)).all()
        assert (ds["neuron_score"].where(ds["neuron_n_chosen"] == 0) == 0).sum() == (
            (ds["neuron_n_chosen"] == 0).sum() * ds.sizes["neuron"]
        )


def test_gold_target_uses_the_objects_first_token(olmoe, probe):
    from mechmoe.probes import first_token_ids

    ds = get_measure("head_lpi", target="gold")(olmoe, probe)
    targets = first_token_ids(olmoe.tokenizer, probe.objects, probe.prompts)
    ref = attribute(olmoe, list(probe.prompts), level="head", target="gold", targets=targets)
    np.testing.assert_array_equal(ds["head_score"].values, ref["score"].values)
    assert ds.attrs["target"] == "gold"


@pytest.mark.parametrize("family", ["olmoe", "llama"])
def test_expert_head_and_layer_lpi(family, olmoe, llama, probe):
    model = olmoe if family == "olmoe" else llama
    prompts = list(probe.prompts)
    expert = get_measure("expert_lpi")
    ds = expert(model, probe)
    _check_layout(expert, ds, model, probe)
    if family == "olmoe":
        ref = attribute(model, prompts, level="expert")
        np.testing.assert_array_equal(ds["expert_score"].values, ref["score"].fillna(0).values)
        np.testing.assert_array_equal(ds["expert_n_chosen"].values, ref["n_chosen"].values)
    else:  # the dense MLP is the single expert: its score is the FFN layer's
        ref = attribute(model, prompts, level="ffn")
        np.testing.assert_array_equal(ds["expert_score"].values[:, 0], ref["score"].values)
        assert ds.sizes["expert"] == 1 and (ds["expert_n_chosen"] == len(probe)).all()

    head = get_measure("head_lpi")
    ds = head(model, probe)
    _check_layout(head, ds, model, probe)
    ref = attribute(model, prompts, level="head")
    np.testing.assert_array_equal(ds["head_score"].values, ref["score"].values)
    assert ds["head"].values.tolist() == list(range(model.dims.n_heads))

    layer = get_measure("layer_lpi")
    ds = layer(model, probe)
    _check_layout(layer, ds, model, probe)
    for var, level in (("attn_score", "attn"), ("ffn_score", "ffn")):
        ref = attribute(model, prompts, level=level)
        np.testing.assert_array_equal(ds[var].values, ref["score"].values)


# ---- recall and robustness -----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["olmoe", "llama"])
def test_hit_per_relation_matches_evaluate_at_each_k(family, olmoe, llama, probe):
    model = olmoe if family == "olmoe" else llama
    measure = get_measure("hit", ks=(1, 5, 50), batch_size=3)
    ds = measure(model, probe)
    _check_layout(measure, ds, model, probe)
    assert ds["relation"].values.tolist() == ["adj_antonym", "noun_plural"]
    assert ds["k"].values.tolist() == [1, 5, 50]
    assert ds["n_items"].values.tolist() == [2, 2]
    for k in (1, 5, 50):
        ref = summarize(evaluate(model, probe, k=k, progress=False))
        for rel in ("adj_antonym", "noun_plural"):
            assert float(ds["hit"].sel(relation=rel, k=k)) == float(ref["hit"].sel(relation=rel))
            assert float(ds["mrr"].sel(relation=rel)) == pytest.approx(
                float(ref["mrr"].sel(relation=rel))
            )


@pytest.mark.parametrize("family", ["olmoe", "llama"])
def test_robustness_is_head_robustness(family, olmoe, llama, probe):
    model = olmoe if family == "olmoe" else llama
    measure = get_measure("robustness", ns=(1, 2), seeds=2, k=5)
    ds = measure(model, probe)
    _check_layout(measure, ds, model, probe)
    ref = head_robustness(model, probe, ns=(1, 2), seeds=2, k=5)
    assert ds["n"].values.tolist() == [1, 2] and ds["seed"].values.tolist() == [0, 1]
    assert float(ds["robust_hit_base"]) == float(ref["hit_base"])
    np.testing.assert_array_equal(ds["robust_hit_top"].values, ref["hit_top"].values)
    np.testing.assert_array_equal(ds["robust_hit_random"].values, ref["hit_random"].values)
    np.testing.assert_array_equal(ds["robust_drop_top"].values, ref["drop_top"].values)
    np.testing.assert_array_equal(ds["robust_drop_random"].values, ref["drop_random"].values)
    assert ds.attrs["k"] == 5 and ds["robust_drop_top"].attrs["k"] == 5


# ---- routing -------------------------------------------------------------------------------------
def _topk_by_hand(model, probe):
    """Per valid token (prompt order, then position): top-k experts of softmax(router logits)."""
    out, ids, prompt_of = [], [], []
    for i, prompt in enumerate(probe.prompts):
        cap = model.capture([prompt], positions="all")
        valid = cap.batch.valid[0]
        per_layer = []
        for layer, lc in enumerate(cap.layers):
            probs = torch.softmax(lc.router_logits[0].float(), dim=-1)
            per_layer.append(probs.topk(model.dims.top_k[layer], dim=-1).indices[valid])
        out.append(torch.stack(per_layer, dim=1))  # (token, layer, k)
        ids.append(cap.batch.input_ids[0, cap.batch.positions[0]][valid])
        prompt_of += [i] * int(valid.sum())
    return torch.cat(out).numpy(), torch.cat(ids).numpy(), np.array(prompt_of)


def test_expert_load_and_routing_from_router_logits(olmoe, probe):
    choice, token_ids, prompt_of = _topk_by_hand(olmoe, probe)
    E = olmoe.dims.n_experts[0]

    load = get_measure("expert_load", batch_size=3)
    ds = load(olmoe, probe)
    _check_layout(load, ds, olmoe, probe)
    for layer in range(olmoe.dims.n_layers):
        counts = np.bincount(choice[:, layer].reshape(-1), minlength=E)
        np.testing.assert_allclose(
            ds["expert_load"].sel(layer=layer).values, counts / counts.sum(), rtol=0, atol=1e-12
        )
    np.testing.assert_allclose(ds["expert_load"].sum("expert").values, 1.0)

    routing = get_measure("routing", batch_size=3)
    assert routing.applies_to(olmoe)
    ds = routing(olmoe, probe)
    _check_layout(routing, ds, olmoe, probe)
    rc = ds["routing_choice"]
    assert rc.dtype == np.int64 and rc.sizes["slot"] == 2
    assert rc.sizes["token"] == choice.shape[0]
    np.testing.assert_array_equal(np.sort(rc.values, axis=-1), np.sort(choice, axis=-1))
    np.testing.assert_array_equal(ds["token_id"].values, token_ids)
    np.testing.assert_array_equal(ds["token_prompt"].values, prompt_of)
    relations = np.array([it.relation for it in probe.items])[prompt_of]
    np.testing.assert_array_equal(ds["token_relation"].values.astype(str), relations)
    assert ds["token"].values.tolist() == list(range(choice.shape[0]))


def test_dense_model_routing(llama, probe):
    from mechmoe.core.progress import Recorder, reporting

    with reporting(Recorder()) as rec:
        ds = get_measure("expert_load", batch_size=3)(llama, probe)
    done = [e for e in rec.events if e.kind == "finish"]
    assert [(e.description, e.completed) for e in done] == [("expert load", 2.0)]
    assert ds["expert_load"].shape == (llama.dims.n_layers, 1)
    assert (ds["expert_load"] == 1.0).all()
    routing = get_measure("routing")
    assert not routing.applies_to(llama)
    with pytest.raises(InvalidInputError, match="dense"):
        routing(llama, probe)


def test_mixed_stack_marks_dense_layers(probe):
    model = tiny_model("qwen2_moe")  # layer 1 is a dense MLP
    assert model.dims.layer_kinds[1] == "dense"
    load = get_measure("expert_load")(model, probe)["expert_load"]
    assert float(load.sel(layer=1, expert=0)) == 1.0
    assert float(load.sel(layer=1).sum()) == 1.0
    rc = get_measure("routing")(model, probe)["routing_choice"]
    assert (rc.sel(layer=1, slot=0) == 0).all() and (rc.sel(layer=1, slot=1) == -1).all()
    assert (rc.sel(layer=0) >= 0).all()


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_results_are_storable(olmoe, probe, tmp_path, suffix):
    from mechmoe.ops.results import open_result, save_result

    ds = get_measure("routing")(olmoe, probe)
    back = open_result(save_result(ds, tmp_path / f"routing{suffix}"))
    np.testing.assert_array_equal(back["routing_choice"].values, ds["routing_choice"].values)
    assert back["token_relation"].values.astype(str).tolist() == (
        ds["token_relation"].values.astype(str).tolist()
    )
    assert back.attrs == ds.attrs
