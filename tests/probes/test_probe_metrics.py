from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechmoe._types import ITEM, RELATION
from mechmoe.core.errors import InvalidInputError
from mechmoe.probes import ProbeItem, item_metrics, rank_and_logprob, summarize


def slow_rank(row: list[float], gold: int) -> int:
    return 1 + sum(1 for v in row if v > row[gold])


def slow_logprob(row: list[float], gold: int) -> float:
    m = max(row)
    return row[gold] - (m + math.log(sum(math.exp(v - m) for v in row)))


def make_items(n: int) -> list[ProbeItem]:
    rels = ["alpha", "beta", "gamma"]
    return [ProbeItem(rels[i % 3], f"s{i}", f"o{i}", f"prompt {i}") for i in range(n)]


@pytest.fixture
def synthetic() -> tuple[torch.Tensor, torch.Tensor, list[ProbeItem]]:
    gen = torch.Generator().manual_seed(0)
    n, vocab = 30, 50
    # Integers in a small range make ties common, which is what we want to test.
    logits = torch.randint(-4, 5, (n, vocab), generator=gen).float()
    targets = torch.randint(0, vocab, (n,), generator=gen)
    return logits, targets, make_items(n)


def test_rank_and_logprob_match_hand_computation(synthetic) -> None:
    logits, targets, _ = synthetic
    rank, logprob = rank_and_logprob(logits, targets)
    rows = logits.tolist()
    for i, row in enumerate(rows):
        assert int(rank[i]) == slow_rank(row, int(targets[i]))
        assert float(logprob[i]) == pytest.approx(slow_logprob(row, int(targets[i])), abs=1e-5)
    assert rank.dtype == torch.int64 and logprob.dtype == torch.float32


def test_ties_favour_gold() -> None:
    logits = torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.0, 1.0, 1.0, 3.0]])
    rank, _ = rank_and_logprob(logits, torch.tensor([2, 1]))
    assert rank.tolist() == [1, 3]


def test_low_precision_logits_score_in_float32() -> None:
    logits = torch.randn(4, 40, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    targets = torch.tensor([0, 5, 10, 39])
    _, logprob = rank_and_logprob(logits, targets)
    expected = torch.log_softmax(logits.float(), -1)[torch.arange(4), targets]
    assert logprob.dtype == torch.float32
    torch.testing.assert_close(logprob, expected)


def test_item_metrics_dataset(synthetic) -> None:
    logits, targets, items = synthetic
    k = 5
    ds = item_metrics(logits, targets, items, k=k)
    assert ds["rank"].dims == (ITEM,)
    assert ds.attrs["k"] == k
    assert ds["relation"].values.tolist() == [it.relation for it in items]
    assert ds["subject"].values.tolist() == [it.subject for it in items]
    assert ds["object"].values.tolist() == [it.object for it in items]
    assert ds["prompt"].values.tolist() == [it.prompt for it in items]
    ranks = [slow_rank(r, int(t)) for r, t in zip(logits.tolist(), targets, strict=True)]
    assert ds["rank"].values.tolist() == ranks
    assert ds["hit"].values.tolist() == [r <= k for r in ranks]
    np.testing.assert_allclose(ds["reciprocal_rank"].values, [1 / r for r in ranks])
    assert ds["target_id"].values.tolist() == targets.tolist()


def test_summary_matches_hand_computation(synthetic) -> None:
    logits, targets, items = synthetic
    k = 3
    summary = summarize(item_metrics(logits, targets.tolist(), items, k=k))
    assert summary[RELATION].values.tolist() == ["alpha", "beta", "gamma", "all"]
    rows = logits.tolist()
    for rel in ["alpha", "beta", "gamma", "all"]:
        idx = [i for i, it in enumerate(items) if rel in ("all", it.relation)]
        ranks = [slow_rank(rows[i], int(targets[i])) for i in idx]
        lps = [slow_logprob(rows[i], int(targets[i])) for i in idx]
        got = summary.sel({RELATION: rel})
        assert int(got["count"]) == len(idx)
        assert float(got["hit"]) == pytest.approx(sum(r <= k for r in ranks) / len(idx))
        assert float(got["mrr"]) == pytest.approx(sum(1 / r for r in ranks) / len(idx))
        assert float(got["logprob"]) == pytest.approx(sum(lps) / len(idx), abs=1e-5)
    assert summary["hit"].attrs["long_name"] == "HIT@3"


def test_input_errors() -> None:
    items = make_items(2)
    with pytest.raises(InvalidInputError, match="must match"):
        item_metrics(torch.zeros(3, 4), [0, 1, 2], items)
    with pytest.raises(InvalidInputError, match="k must be at least 1"):
        item_metrics(torch.zeros(2, 4), [0, 1], items, k=0)
    with pytest.raises(InvalidInputError, match=r"target ids must lie in \[0, 4\)"):
        item_metrics(torch.zeros(2, 4), [0, 4], items)


def test_all_equal_or_non_finite_logits_warn_with_the_count() -> None:
    """Every token ties on such a row, so rank 1 there is meaningless: a warning says so."""
    items = make_items(3)
    logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [float("nan"), 1.0, 2.0]])
    with pytest.warns(UserWarning, match=r"^2 of 3 prompts have logits that are all equal"):
        ds = item_metrics(logits, [2, 0, 1], items, k=1)
    # NaN never compares greater, so the flat row and the NaN row rank better than they are
    assert ds["rank"].values.tolist() == [1, 3, 2]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ordinary logits: silent
        item_metrics(logits[1:2], [0], items[:1], k=1)


def test_an_overflowing_scaling_warns_in_evaluate() -> None:
    """ScaleNeurons by 1e38 overflows float32 to NaN logits: evaluate warns for every prompt."""
    from mechmoe.core.interventions import ScaleNeurons
    from mechmoe.probes import evaluate, load_probe
    from mechmoe.testing import tiny_model

    model = tiny_model("llama")
    probe = load_probe("adj_antonym").head(4)
    huge = ScaleNeurons({(la, 0, n): 1e38 for la in range(2) for n in range(48)})
    with pytest.warns(UserWarning, match=r"^4 of 4 prompts have logits that are all equal or"):
        ds = evaluate(model, probe, k=1, progress=False, interventions=huge)
    assert ds["hit"].all()  # the meaningless perfect score the warning is about
