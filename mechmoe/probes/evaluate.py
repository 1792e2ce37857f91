"""Run a probe set through a model and score the gold objects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mechmoe.core.errors import InvalidInputError
from mechmoe.core.progress import task
from mechmoe.core.provenance import provenance
from mechmoe.probes.probeset import ProbeSet
from mechmoe.probes.tokens import gold_token_ids

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
        As :func:`mechmoe.probes.item_metrics` (an item with several gold objects counts
        the best-ranked one; ``objects`` lists them all, ``best_object`` names it), with
        attrs ``model``, ``probe`` (the relation names), ``k`` and ``intervened``.
        Reduce it with :func:`mechmoe.probes.summarize`.

    Warns
    -----
    UserWarning
        When some prompts' logits are all equal or not finite (e.g. an intervention
        scaled everything to 0): every token ties there, so the ranks mean nothing.

    Examples
    --------
    >>> from mechmoe.testing import tiny_model
    >>> from mechmoe.probes import evaluate, load_probe, summarize
    >>> ds = evaluate(tiny_model("llama"), load_probe("adj_antonym").head(4), k=5)
    >>> int(summarize(ds)["count"].sel(relation="all"))
    4
    """
    import numpy as np

    from mechmoe.probes.metrics import _dataset, best_of_sets, degenerate_rows, warn_degenerate

    if len(probe) == 0:
        raise InvalidInputError("the probe set is empty; nothing to evaluate")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
    if k < 1:
        raise InvalidInputError(f"k must be at least 1, got {k}")
    prompts = list(probe.prompts)
    sets = gold_token_ids(model.tokenizer, probe.object_sets, prompts)
    starts = list(range(0, len(prompts), batch_size))
    parts: list[tuple[np.ndarray, ...]] = []
    n_bad = 0
    for start in _track(starts, progress and len(starts) > 1, f"probing {len(prompts)} prompts"):
        batch = prompts[start : start + batch_size]
        capture = model.capture(batch, positions="last", interventions=interventions)
        logits = capture.logits
        if logits.ndim == 3:
            logits = logits[:, -1, :]
        n_bad += int(degenerate_rows(logits).sum())
        parts.append(best_of_sets(logits, sets[start : start + len(batch)]))
    warn_degenerate(n_bad, len(prompts))
    rank, logprob, target_id, best = (np.concatenate(cols) for cols in zip(*parts, strict=True))
    ds = _dataset(probe.items, rank, logprob, target_id, k, best=best)
    ds.attrs.update(
        provenance(
            model,
            probe=probe,
            options={"k": k, "batch_size": batch_size},
            intervened=interventions is not None,
        )
    )
    return ds


def _track(seq: list[int], show: bool, description: str) -> Iterator[int]:
    with task(description, total=len(seq), show=show) as bar:
        for item in seq:
            yield item
            bar.advance()


__all__ = ["evaluate"]
