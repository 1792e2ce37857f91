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
