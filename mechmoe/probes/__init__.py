"""Probe sets: relational prompts with gold objects, their loaders and metrics.

Importing this package is light: torch and xarray are imported on first use of the
metrics (:func:`item_metrics`, :func:`summarize`, :func:`rank_and_logprob`) or of
:func:`evaluate`.

Examples
--------
>>> from mechmoe.probes import load_probe
>>> probe = load_probe("country_capital_city")
>>> probe.meta("country_capital_city").relation_type
'factual'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mechmoe.probes.evaluate import evaluate as evaluate
from mechmoe.probes.probeset import ProbeItem as ProbeItem
from mechmoe.probes.probeset import ProbeSet as ProbeSet
from mechmoe.probes.probeset import RelationMeta as RelationMeta
from mechmoe.probes.prompt_file import PromptFile as PromptFile
from mechmoe.probes.prompt_file import read_prompts as read_prompts
from mechmoe.probes.registry import list_probes as list_probes
from mechmoe.probes.registry import load_probe as load_probe
from mechmoe.probes.tokens import first_token_ids as first_token_ids
from mechmoe.probes.tokens import gold_token_ids as gold_token_ids

if TYPE_CHECKING:
    from mechmoe.probes.metrics import item_metrics as item_metrics
    from mechmoe.probes.metrics import rank_and_logprob as rank_and_logprob
    from mechmoe.probes.metrics import summarize as summarize

_LAZY = {"item_metrics", "rank_and_logprob", "summarize"}


def __getattr__(name: str) -> Any:
    # The metrics module imports torch and xarray; load it only when asked for.
    if name in _LAZY:
        from mechmoe.probes import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module 'mechmoe.probes' has no attribute {name!r}")


__all__ = [
    "ProbeItem",
    "ProbeSet",
    "PromptFile",
    "RelationMeta",
    "evaluate",
    "first_token_ids",
    "gold_token_ids",
    "item_metrics",
    "list_probes",
    "load_probe",
    "rank_and_logprob",
    "read_prompts",
    "summarize",
]
