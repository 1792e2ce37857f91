"""The provenance helper: storable attrs, stable probe and weight hashes."""

from __future__ import annotations

import copy
import json
from importlib import metadata

import numpy as np
import pytest
import torch
import xarray as xr

import mechmoe
from mechmoe.core.provenance import probe_hash, provenance, weights_hash, weights_hash_soon
from mechmoe.probes import load_probe
from mechmoe.testing import tiny_model


@pytest.fixture(scope="module")
def olmoe():
    return tiny_model("olmoe")


def test_same_model_twice_hashes_alike_and_a_perturbed_copy_differs(olmoe):
    again = tiny_model("olmoe")
    assert weights_hash(olmoe) == weights_hash(again)
    perturbed = copy.deepcopy(again.hf)
    with torch.no_grad():
        name, p = next(iter(perturbed.named_parameters()))
        p.view(-1)[0] += 1e-6
    assert weights_hash(perturbed) != weights_hash(again)
    # a torch module and its mechmoe handle hash alike
    assert weights_hash(again.hf) == weights_hash(again)


def test_background_hash_equals_the_hash_and_attribute_records_it():
    model = tiny_model("olmo2", seed=3)
    fut = weights_hash_soon(model)
    assert fut is not None and fut.result(timeout=60) == weights_hash(model, refresh=True)
    assert weights_hash_soon(object()) is None  # nothing to hash: provenance's default path
    ds = mechmoe.attribute(model, ["The capital of France is"], level="neuron")
    assert ds.attrs["weights_hash"] == weights_hash(model)


def test_in_place_edit_is_seen_despite_the_cache():
    model = tiny_model("llama")
    before = weights_hash(model)
    with torch.no_grad():
        model.hf.lm_head.weight[0, 0] += 1.0
    after = weights_hash(model)
    assert after != before
    with torch.no_grad():
        model.hf.lm_head.weight[0, 0] -= 1.0
    # a float round trip may not restore the exact bits; compare with a fresh hash
    assert weights_hash(model) == weights_hash(model, refresh=True)


def test_hash_depends_on_dtype_and_on_names():
    model = tiny_model("llama")
    half = copy.deepcopy(model.hf).to(torch.bfloat16)
    assert weights_hash(half) != weights_hash(model)
    assert len(weights_hash(half)) == 32


def test_probe_hash_is_stable_and_content_sensitive():
    probe = load_probe("adj_antonym,noun_plural")
    assert probe_hash(probe) == probe_hash(load_probe("adj_antonym,noun_plural"))
    assert probe_hash(probe) != probe_hash(probe.head(len(probe) - 1))
    assert probe_hash(probe) != probe_hash(load_probe("noun_plural,adj_antonym"))
    # another template changes the prompts and the hash
    assert probe_hash(load_probe("adj_antonym")) != probe_hash(
        load_probe("adj_antonym", template="{} is the opposite of")
    )


def test_provenance_keys_types_and_values(olmoe):
    probe = load_probe("adj_antonym").head(3)
    attrs = provenance(
        olmoe,
        probe=probe,
        options={"ks": (1, 10), "exact": True, "target": "top1", "nested": {"a": [1, 2]}},
        step=5000,
        tokens=20_000_000_000,
        level="neuron",
    )
    assert all(isinstance(v, (str, int, float)) for v in attrs.values())
    assert attrs["model"] == "tiny:olmoe" and attrs["revision"] == ""
    assert attrs["adapter"] == olmoe.spec.name and attrs["dtype"] == "float32"
    assert (attrs["is_moe"], attrs["top_k"], attrs["n_experts"]) == (1, 2, 8)
    assert attrs["step"] == 5000 and attrs["tokens"] == 2e10
    assert isinstance(attrs["tokens"], float)
    assert attrs["probe"] == "adj_antonym" and attrs["probe_items"] == 3
    assert attrs["probe_hash"] == probe_hash(probe)
    assert attrs["weights_hash"] == weights_hash(olmoe)
    assert json.loads(attrs["options"]) == {
        "ks": [1, 10],
        "exact": True,
        "target": "top1",
        "nested": {"a": [1, 2]},
    }
    assert attrs["ks"] == "1,10" and attrs["exact"] == 1 and attrs["target"] == "top1"
    assert "nested" not in attrs  # no flat form: only in the JSON
    assert attrs["level"] == "neuron"
    assert attrs["mechmoe_version"] == mechmoe.__version__
    assert attrs["torch_version"] == metadata.version("torch")
    assert attrs["transformers_version"] == metadata.version("transformers")
    assert attrs["nnsight_version"] == metadata.version("nnsight")


def test_provenance_dense_model_and_options():
    dense = tiny_model("llama")
    attrs = provenance(dense, weights=False)
    assert (attrs["is_moe"], attrs["top_k"], attrs["n_experts"]) == (0, 1, 1)
    assert "weights_hash" not in attrs and "step" not in attrs and "probe" not in attrs
    assert provenance(dense, weights="abc")["weights_hash"] == "abc"
    with pytest.raises(ValueError, match="reserved"):
        provenance(options={"model": "x"})


def test_step_and_tokens_come_from_the_handle_unless_given():
    class Handle:
        name, revision, step, tokens = "m", "step10-tokens1B", 10, 1e9

    attrs = provenance(Handle())
    assert attrs["step"] == 10 and attrs["tokens"] == 1e9 and attrs["revision"] == "step10-tokens1B"
    assert provenance(Handle(), step=20)["step"] == 20
    assert "tokens" not in provenance(Handle(), tokens=float("nan"))


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_attrs_survive_a_save_round_trip(olmoe, tmp_path, suffix):
    from mechmoe.ops.results import open_result, save_result

    attrs = provenance(
        olmoe,
        probe=load_probe("adj_antonym").head(2),
        options={"ks": (1, 10), "flag": False, "tol": 1e-4},
        step=np.int64(3),
    )
    ds = xr.Dataset({"x": ("a", np.arange(3.0))}, attrs=attrs)
    back = open_result(save_result(ds, tmp_path / f"r{suffix}"))
    assert {k: back.attrs[k] for k in attrs} == attrs


def test_ops_results_carry_provenance(olmoe):
    from mechmoe.ops.attribution import attribute

    ds = attribute(olmoe, ["The capital of France is"], level="expert")
    assert ds.attrs["weights_hash"] == weights_hash(olmoe)
    assert ds.attrs["level"] == "expert" and ds.attrs["precision"] == "exact"
    assert ds.attrs["probe_hash"] == probe_hash(["The capital of France is"])
    assert json.loads(ds.attrs["options"])["level"] == "expert"
