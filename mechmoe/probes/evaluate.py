"""Run a probe set through a model and score the gold objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mechmoe.errors import InvalidInputError
from mechmoe.probes.probeset import ProbeSet
from mechmoe.probes.tokens import first_token_ids

if TYPE_CHECKING:
    import xarray as xr


def evaluate(
    model: Any,
    probe: ProbeSet,
    *,
    k: int = 10,
    batch_size: int = 32,
    interventions: Any = None,
    progress: bool = True,
) -> xr.Dataset:
    """Per-item rank, HIT@k, reciprocal rank and log-probability of each gold object.

    Parameters
    ----------
    model
        A :class:`mechmoe.Model`: its ``capture(prompts, positions="last",
        interventions=...)`` gives last-token logits, ``tokenizer`` encodes the
        objects, ``name`` labels the result.
    probe
        The probe set to run.
    k
        Cut-off of HIT@k.
    batch_size
        Prompts per forward pass.
    interventions
        Passed through to ``model.capture`` (e.g. masked heads), so the same probe
        can be scored before and after an intervention.
    progress
        Show a progress bar when there is more than one batch.

    Returns
    -------
    xarray.Dataset
        As :func:`mechmoe.probes.item_metrics`, with attrs ``model``, ``probe`` (the
        relation names), ``k`` and ``intervened``. Reduce it with
        :func:`mechmoe.probes.summarize`.

    Examples
    --------
    >>> from mechmoe.testing import tiny_model
    >>> from mechmoe.probes import evaluate, load_probe, summarize
    >>> ds = evaluate(tiny_model("llama"), load_probe("adj_antonym").head(4), k=5)
    >>> int(summarize(ds)["count"].sel(relation="all"))
    4
    """
    import torch

    from mechmoe.probes.metrics import _dataset, rank_and_logprob

    if len(probe) == 0:
        raise InvalidInputError("the probe set is empty; nothing to evaluate")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
    if k < 1:
        raise InvalidInputError(f"k must be at least 1, got {k}")
    prompts = list(probe.prompts)
    targets = torch.tensor(
        first_token_ids(model.tokenizer, probe.objects, prompts), dtype=torch.long
    )
    starts = list(range(0, len(prompts), batch_size))
    ranks, logprobs = [], []
    for start in _track(starts, progress and len(starts) > 1, f"probing {len(prompts)} prompts"):
        batch = prompts[start : start + batch_size]
        capture = model.capture(batch, positions="last", interventions=interventions)
        logits = capture.logits
        if logits.ndim == 3:
            logits = logits[:, -1, :]
        rank, logprob = rank_and_logprob(
            logits, targets[start : start + len(batch)].to(logits.device)
        )
        ranks.append(rank.cpu())
        logprobs.append(logprob.cpu())
    ds = _dataset(
        probe.items, torch.cat(ranks).numpy(), torch.cat(logprobs).numpy(), targets.numpy(), k
    )
    ds.attrs.update(
        model=str(getattr(model, "name", type(model).__name__)),
        probe=",".join(probe.relation_names),
        intervened=int(interventions is not None),
    )
    return ds


def _track(seq: list[int], show: bool, description: str) -> Any:
    if not show:
        return seq
    from rich.progress import track

    return track(seq, description=description, transient=True)


__all__ = ["evaluate"]
