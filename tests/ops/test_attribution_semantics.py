"""What attribution records: the precision actually used, and the gold-target rule."""

from __future__ import annotations

import numpy as np
import pytest

from mechmoe.core.errors import InvalidInputError
from mechmoe.ops.attribution import BOUNDED_LEVELS, attribute
from mechmoe.testing import DEFAULT_PROMPTS, tiny_model

PROMPTS = list(DEFAULT_PROMPTS)[:3]


@pytest.fixture(scope="module")
def model():
    return tiny_model("olmoe")


@pytest.mark.parametrize("level", ["expert", "head", "attn", "ffn"])
def test_levels_computed_exactly_record_exact(model, level):
    """Asking for bounded where no truncation exists gives exact scores, recorded as exact."""
    assert level not in BOUNDED_LEVELS
    asked = attribute(model, PROMPTS, level=level, precision="bounded", tolerance=1e-3)
    exact = attribute(model, PROMPTS, level=level, precision="exact")
    assert asked.attrs["precision"] == "exact"
    assert asked.attrs["precision_requested"] == "bounded"
    assert asked.attrs["bound"] == 0.0
    np.testing.assert_array_equal(asked["score"].values, exact["score"].values)
    assert exact.attrs["precision_requested"] == "exact"


def test_neuron_level_records_bounded(model):
    ds = attribute(model, PROMPTS, level="neuron", precision="bounded", tolerance=1e-3)
    assert "neuron" in BOUNDED_LEVELS
    assert ds.attrs["precision"] != "exact" and ds.attrs["precision_requested"] == "bounded"
    assert ds.attrs["bound"] >= 0.0


def test_gold_sets_pick_the_highest_logit_first_on_ties(model):
    row = model.capture(PROMPTS[:1]).logits[0, -1]
    order = row.argsort(descending=True).tolist()
    best, worse = order[0], order[5]
    ds = attribute(model, PROMPTS[:1], level="attn", target="gold", targets=[(worse, best)])
    assert ds["target"].values.tolist() == [best]
    ds = attribute(model, PROMPTS[:1], level="attn", target="gold", targets=[(best, best)])
    assert ds["target"].values.tolist() == [best]
    single = attribute(model, PROMPTS[:1], level="attn", target="gold", targets=[best])
    np.testing.assert_array_equal(ds["score"].values, single["score"].values)
    assert single.attrs["gold_rule"]  # recorded whenever target="gold"
    assert attribute(model, PROMPTS[:1], level="attn").attrs["gold_rule"] == ""


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([()], "non-empty tuple of ids"),
        ([(1, 10**9)], "is not a token id"),
        ([(1, True)], "is not a token id"),
    ],
)
def test_bad_gold_sets_are_refused(model, targets, message):
    with pytest.raises(InvalidInputError, match=message):
        attribute(model, PROMPTS[:1], level="attn", target="gold", targets=targets)


# ---- level="layer": both sub-layers from one pass ---------------------------------------
@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe", "llama"])
def test_layer_level_is_attn_and_ffn_side_by_side(family):
    """What `mechmoe attribute --level layer` shows: the attn and ffn results, stacked."""
    from mechmoe.ops.results import top_items

    model = tiny_model(family)
    layer = attribute(model, PROMPTS, level="layer", per_prompt=True)
    assert layer["score"].dims == ("sublayer", "layer")
    assert layer["score_per_prompt"].dims == ("sublayer", "prompt", "layer")
    assert layer["sublayer"].values.tolist() == ["attn", "ffn"]
    assert layer.attrs["level"] == "layer" and '"level": "layer"' in layer.attrs["options"]
    for sub in ("attn", "ffn"):
        alone = attribute(model, PROMPTS, level=sub, per_prompt=True)
        for name in ("score", "score_per_prompt"):
            np.testing.assert_array_equal(layer[name].sel(sublayer=sub).values, alone[name].values)
        np.testing.assert_array_equal(layer["target"].values, alone["target"].values)
    # one ranking over both sub-layers, labelled by sub-layer
    items = top_items(layer, 2 * model.dims.n_layers)
    flat = sorted(
        (
            (float(layer["score"].sel(sublayer=s, layer=la)), f"L{la} {s}")
            for s in ("attn", "ffn")
            for la in range(model.dims.n_layers)
        ),
        reverse=True,
    )
    assert [(it.label, it.score) for it in items] == [(label, v) for v, label in flat]


def test_layer_level_with_gold_targets_and_a_capture_count(monkeypatch):
    """One pass serves both sub-layers: the model is captured once per batch."""
    model = tiny_model("olmoe")
    calls = []
    real = model.capture

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "capture", counting)
    ids = [int(i) for i in real(PROMPTS).logits[:, -1].argsort(-1)[:, -3]]
    ds = attribute(model, PROMPTS, level="layer", target="gold", targets=ids, batch_size=2)
    assert len(calls) == 2  # 3 prompts in batches of 2
    assert ds["target"].values.tolist() == ids
