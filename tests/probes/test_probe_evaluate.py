from __future__ import annotations

import pytest
import torch

from mechmoe.probes import evaluate, first_token_ids, load_probe, rank_and_logprob, summarize

try:
    import mechmoe.model  # noqa: F401

    HAVE_MODEL = True
except ImportError:  # written in parallel; the rest of this file does not need it
    HAVE_MODEL = False


@pytest.mark.skipif(
    not HAVE_MODEL, reason="mechmoe.model is not importable yet (written in parallel)"
)
def test_evaluate_on_tiny_llama() -> None:
    from mechmoe.testing import tiny_model

    model = tiny_model("llama")
    probe = load_probe("adj_antonym,noun_plural").head(6, per_relation=True)
    ds = evaluate(model, probe, k=20, batch_size=4)  # several batches: exercises the bar
    one = evaluate(model, probe, k=20, batch_size=len(probe), progress=False)
    assert ds.sizes["item"] == len(probe) == 12
    assert ds.attrs["model"] == "tiny:llama"
    assert ds.attrs["probe"] == "adj_antonym,noun_plural"
    assert ds.attrs["intervened"] == 0
    # Batching and padding must not change the answer.
    assert ds["rank"].values.tolist() == one["rank"].values.tolist()
    torch.testing.assert_close(
        torch.from_numpy(ds["logprob"].values),
        torch.from_numpy(one["logprob"].values),
        atol=1e-4,
        rtol=0,
    )
    # Same as scoring the capture's own logits by hand.
    targets = torch.tensor(first_token_ids(model.tokenizer, probe.objects, list(probe.prompts)))
    logits = model.capture(list(probe.prompts), positions="last").logits[:, -1, :]
    rank, logprob = rank_and_logprob(logits, targets)
    assert ds["rank"].values.tolist() == rank.tolist()
    assert ds["target_id"].values.tolist() == targets.tolist()
    summary = summarize(ds)
    assert int(summary["count"].sel(relation="all")) == 12
    assert 0.0 <= float(summary["hit"].sel(relation="all")) <= 1.0


class FakeCapture:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class FakeModel:
    """Stands in for mechmoe.Model: logits favour a fixed token, records interventions."""

    name = "fake"

    def __init__(self) -> None:
        from mechmoe.testing import tiny_tokenizer

        self.tokenizer = tiny_tokenizer()
        self.calls: list[tuple[int, object]] = []

    def capture(self, prompts, *, positions="last", interventions=None):
        assert positions == "last"
        self.calls.append((len(prompts), interventions))
        logits = torch.zeros(len(prompts), 1, len(self.tokenizer))
        logits[:, 0, 5] = 1.0
        return FakeCapture(logits)


def test_evaluate_batches_and_passes_interventions() -> None:
    model = FakeModel()
    probe = load_probe("adj_antonym").head(5)
    marker = object()
    ds = evaluate(model, probe, k=1, batch_size=2, interventions=marker, progress=False)
    assert [n for n, _ in model.calls] == [2, 2, 1]
    assert all(i is marker for _, i in model.calls)
    assert ds.attrs["intervened"] == 1
    assert (ds["rank"].values == 2).all()  # token 5 beats every gold token; ties favour gold
    assert not ds["hit"].values.any()


def test_evaluate_rejects_bad_options() -> None:
    from mechmoe.core.errors import InvalidInputError

    probe = load_probe("adj_antonym")
    with pytest.raises(InvalidInputError, match="batch_size"):
        evaluate(FakeModel(), probe, batch_size=0)
    with pytest.raises(InvalidInputError, match="empty"):
        evaluate(FakeModel(), probe.head(0))
