"""The head-masking robustness experiment on tiny models, with injected and computed rankings."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from mechmoe.core.errors import InvalidInputError
from mechmoe.core.interventions import MaskHeads
from mechmoe.ops.robustness import head_robustness, rank_heads
from mechmoe.probes import evaluate, load_probe
from mechmoe.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("mixtral")


@pytest.fixture(scope="module")
def probe():
    return load_probe("adj_antonym,noun_plural").head(3, per_relation=True)


def test_rank_heads_orders_by_score_with_nan_last():
    scores = xr.DataArray([[0.1, np.nan, 0.5], [0.5, -1.0, 0.2]], dims=("layer", "head"))
    assert rank_heads(scores) == ((0, 2), (1, 0), (1, 2), (0, 0), (1, 1), (0, 1))
    assert rank_heads(scores.T) == rank_heads(scores)  # dim order does not matter


def test_injected_ranking_matches_masking_by_hand(model, probe):
    ranking = [(1, 3), (0, 0), (1, 1)]
    ds = head_robustness(model, probe, ns=(1, 3), seeds=(7,), k=5, ranking=ranking)
    assert dict(ds.sizes) == {"n": 2, "seed": 1, "rank": 3, "slot": 3}
    for n in (1, 3):
        by_hand = evaluate(model, probe, k=5, progress=False, interventions=MaskHeads(ranking[:n]))
        assert float(ds["hit_top"].sel(n=n)) == float(by_hand["hit"].mean())
        assert float(ds["mrr_top"].sel(n=n)) == pytest.approx(
            float(by_hand["reciprocal_rank"].mean())
        )
    # the random control is reproducible and recorded
    layers = ds["random_layer"].sel(n=3, seed=7).values
    heads = ds["random_head"].sel(n=3, seed=7).values
    rnd = evaluate(
        model,
        probe,
        k=5,
        progress=False,
        interventions=MaskHeads(list(zip(layers, heads, strict=True))),
    )
    assert float(ds["hit_random"].sel(n=3, seed=7)) == float(rnd["hit"].mean())
    assert ds.attrs["ranking"] == "given" and ds.attrs["probe"] == "adj_antonym,noun_plural"
    assert ds.attrs["model"] == "tiny:mixtral" and ds.attrs["k"] == 5


def test_drop_is_relative_to_the_baseline(model, probe):
    ds = head_robustness(model, probe, ns=(2,), seeds=2, k=50, ranking=[(0, 1), (1, 2)])
    base = float(ds["hit_base"])
    assert base > 0
    np.testing.assert_allclose(ds["drop_top"].values, 1 - ds["hit_top"].values / base)
    np.testing.assert_allclose(ds["drop_random"].values, 1 - ds["hit_random"].values / base)


def test_ranking_from_head_lpi_and_grid_capped(model, probe):
    from mechmoe.ops.attribution import attribute

    ds = head_robustness(model, probe, ns=(1, 2, 50), seeds=1)
    total = model.dims.n_layers * model.dims.n_heads
    assert ds["n"].values.tolist() == [1, 2, total]
    score = attribute(model, list(probe.prompts), level="head")["score"]
    assert tuple(
        zip(ds["ranked_layer"].values, ds["ranked_head"].values, strict=True)
    ) == rank_heads(score)
    assert np.all(np.diff(ds["ranked_score"].values) <= 0)
    assert "LPI" in ds.attrs["ranking"]


def test_masking_every_head_in_mean_mode_matches_masking_by_hand(model, probe):
    """All 8 heads mean-masked (means over the probe's prompts): the grid's numbers are
    those of evaluate() under the same mask, and the base row is the unmasked model."""
    from mechmoe.ops.interventions import head_means

    ds = head_robustness(model, probe, ns=(8,), seeds=1, mode="mean", ranking=np.zeros((2, 4)))
    assert ds.attrs["mode"] == "mean"
    every = [(la, h) for la in range(2) for h in range(4)]
    # a constant score array ranks heads in (layer, head) order
    assert list(zip(ds["ranked_layer"].values, ds["ranked_head"].values, strict=True)) == every
    means = head_means(model, list(probe.prompts))
    by_hand = evaluate(
        model, probe, k=10, progress=False, interventions=MaskHeads(every, mode="mean", means=means)
    )
    assert float(ds["hit_top"].sel(n=8)) == float(by_hand["hit"].mean())
    assert float(ds["mrr_top"].sel(n=8)) == pytest.approx(float(by_hand["reciprocal_rank"].mean()))
    # n = every head: the random control draws the same set, so it scores the same
    assert float(ds["hit_random"].sel(n=8, seed=0)) == float(ds["hit_top"].sel(n=8))
    base = evaluate(model, probe, k=10, progress=False)
    assert float(ds["hit_base"]) == float(base["hit"].mean())
    assert float(ds["mrr_base"]) == pytest.approx(float(base["reciprocal_rank"].mean()))
    # masking changed the model's output (the numbers above are not the base ones by accident)
    assert not np.array_equal(by_hand["logprob"].values, base["logprob"].values)


def test_unknown_mode_is_refused(model, probe):
    with pytest.raises(InvalidInputError, match="mode='max': use one of 'zero', 'mean'"):
        head_robustness(model, probe, ranking=[(0, 0)], ns=(1,), mode="max")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ns": (0,)}, "at least 1"),
        ({"seeds": ()}, "at least one seed"),
        ({"ranking": [(0, 9)]}, "head 9 at layer 0 is out of range"),
        ({"ranking": [(0, 1), (0, 1)]}, "more than once"),
        ({"ranking": [(0, 1)], "ns": (2,)}, "ranking has 1 heads"),
    ],
)
def test_bad_options(model, probe, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        head_robustness(model, probe, **({"ranking": [(0, 0), (0, 1)], "ns": (1,)} | kwargs))


# ---- head_ranking: the ranking on its own ------------------------------------------------
@pytest.mark.parametrize("target", ["top1", "gold"])
def test_head_ranking_is_head_lpi_sorted_by_hand(model, probe, target):
    """The order is the head-level LPI over the probe, sorted here with Python's sorted:
    highest first, ties by layer then head."""
    from mechmoe.ops.attribution import attribute
    from mechmoe.ops.robustness import head_ranking
    from mechmoe.probes import first_token_ids

    ranking = head_ranking(model, probe, target=target, batch_size=2)
    targets = (
        first_token_ids(model.tokenizer, probe.objects, probe.prompts) if target == "gold" else None
    )
    score = attribute(
        model, list(probe.prompts), level="head", target=target, targets=targets, batch_size=2
    )
    values = score["score"].values
    by_hand = sorted(
        ((la, h) for la in range(values.shape[0]) for h in range(values.shape[1])),
        key=lambda p: (-values[p], p[0], p[1]),
    )
    assert list(ranking.heads) == by_hand
    np.testing.assert_array_equal(ranking.scores, [values[p] for p in by_hand])
    assert ranking.source == f"head-level LPI (target={target}), mean over the probe"
    assert ranking.top(3) == tuple(by_hand[:3]) and len(ranking.top(99)) == len(by_hand)


def test_head_ranking_given_as_pairs_or_scores(model, probe):
    from mechmoe.core.errors import InvalidTypeError
    from mechmoe.ops.robustness import head_ranking

    given = head_ranking(model, probe, [(1, 2), (0, 0)])
    assert given.heads == ((1, 2), (0, 0)) and given.source == "given"
    assert np.isnan(given.scores).all()
    scores = np.arange(8.0).reshape(2, 4)
    assert head_ranking(model, probe, scores).heads[:2] == ((1, 3), (1, 2))
    with pytest.raises(InvalidInputError, match="more than once"):
        head_ranking(model, probe, [(0, 1), (0, 1)])
    with pytest.raises(InvalidTypeError, match="ranking= takes"):
        head_ranking(model, probe, "0:1")
