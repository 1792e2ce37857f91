"""Every statistic of a run as one labeled Dataset, its headline figures, and side-by-side runs.

Examples
--------
>>> from mechmoe.analysis.testing import toy_store
>>> summary = summarize_run(toy_store(moe=True))
>>> sorted(headline(summary))[:3]
['backbone_share', 'consolidation_step', 'drop_step']
>>> compare(toy_store(moe=True), toy_store(moe=False)).sizes["run"]
2
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from mechmoe._types import N_MASKED, RUN, STEP
from mechmoe.analysis._common import NotApplicableError
from mechmoe.analysis.consolidation import consolidation
from mechmoe.analysis.distribution import (
    DEFAULT_QS,
    backbone_curve,
    backbone_share,
    gini,
    lorenz,
    normalized_entropy,
    positive_updates,
    top_count,
)
from mechmoe.analysis.robustness import robustness_curves
from mechmoe.analysis.routing import coactivation, router_saturation, specialization
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.provenance import as_attrs, options_json, versions

#: ``attrs["mechmoe_result"]`` of a :func:`summarize_run` Dataset.
SUMMARY_KIND = "trajectory_summary"
#: Points of the Lorenz curve kept in a summary (the full curve has N + 1).
LORENZ_POINTS = 101


def summarize_run(
    ds: xr.Dataset,
    *,
    q: float = 0.01,
    k: int | None = None,
    tau: float = 0.9,
    n_masked: int = 10,
) -> xr.Dataset:
    """All trajectory statistics of one run's store, as one Dataset.

    Parameters
    ----------
    ds
        The store's Dataset (``mechmoe.trajectory.open_store``), MoE or dense.
    q
        Backbone fraction (top ``max(1, ceil(q·N))`` neurons by positive updates).
    k
        Top-k size for the Jaccard index of :func:`~mechmoe.analysis.consolidation`;
        default the backbone size at ``q``.
    tau
        Consolidation threshold on Spearman ρ against the final checkpoint.
    n_masked
        The number of masked heads the headline drop is read at.

    Returns
    -------
    xarray.Dataset
        From ``neuron_score``: ``positive_updates``, scalars ``backbone_share``,
        ``gini``, ``normalized_entropy``, ``consolidation_step``, ``backbone_curve``
        (q), ``lorenz`` (population, 101 points) and the per-step consolidation
        variables. From the robustness measure: ``drop_top``, ``drop_random_mean``,
        ``drop_random_std``, ``excess_drop`` (step, n), ``hit_base`` and the headline
        scalars ``hit_drop_top``, ``hit_drop_random``, ``hit_drop_random_std`` (the last
        step measured, ``n = n_masked``) with ``hit_drop_step``. ``hit`` and ``mrr``
        copied from the store. From the routing record (MoE only): ``router_saturation``, ``coactivation`` (final step)
        and the :func:`~mechmoe.analysis.specialization` variables. A statistic the
        store cannot give is left out and named, with the reason, in
        ``attrs["absent"]``; the store's attrs are copied, with the options as
        ``analysis_*`` attrs.
    """
    if not isinstance(ds, xr.Dataset):
        raise InvalidInputError("summarize_run needs the store's xarray.Dataset (open_store(path))")
    top_count(1, q)  # validates q before any work
    if n_masked < 1:
        raise InvalidInputError(f"n_masked={n_masked}: mask at least one head")
    parts: list[xr.Dataset] = []
    absent: list[str] = []
    # the scalar figures are always there (NaN where the store cannot give them)
    scalars: dict[str, float] = dict.fromkeys(
        ("backbone_share", "gini", "normalized_entropy", "consolidation_step"), math.nan
    )
    jaccard_k = k
    if "neuron_score" in ds.data_vars and not bool(ds["neuron_score"].notnull().any()):
        absent.append("backbone, consolidation: 'neuron_score' is NaN at every step")
    elif "neuron_score" in ds.data_vars:
        scores = ds["neuron_score"]
        pu = positive_updates(scores)
        n_units = int(pu.size)
        if k is None:
            jaccard_k = top_count(n_units, q)
        scalars["backbone_share"] = backbone_share(pu, q)
        scalars["gini"] = gini(pu)
        scalars["normalized_entropy"] = normalized_entropy(pu)
        qs = sorted(set(DEFAULT_QS) | {float(q)})
        cons = consolidation(scores, k=jaccard_k, tau=tau)
        cons.attrs = {}
        parts += [
            pu.to_dataset(),
            backbone_curve(pu, qs).to_dataset(),
            lorenz(pu, points=LORENZ_POINTS).to_dataset(),
            cons,
        ]
    else:
        absent.append("backbone, consolidation: no 'neuron_score' (neuron_lpi measure)")
    scalars.update(
        hit_drop_top=math.nan,
        hit_drop_random=math.nan,
        hit_drop_random_std=math.nan,
        hit_drop_step=math.nan,
    )
    hit_k = None
    try:
        rob = robustness_curves(ds)
    except NotApplicableError:
        absent.append("robustness: no 'robust_*' variables (robustness measure)")
    else:
        hit_k = rob.attrs.get("k")
        rob.attrs = {}
        parts.append(rob)
        if N_MASKED in rob.coords and n_masked in rob[N_MASKED].values:
            at_n = rob.sel({N_MASKED: n_masked})
            # the last step where it was measured (NaN at steps added without it)
            done = np.flatnonzero(np.isfinite(at_n["drop_top"].values))
            if done.size:
                at = at_n.isel({STEP: int(done[-1])})
                scalars["hit_drop_top"] = float(at["drop_top"])
                scalars["hit_drop_random"] = float(at["drop_random_mean"])
                scalars["hit_drop_random_std"] = float(at["drop_random_std"])
                scalars["hit_drop_step"] = float(at[STEP])
        else:
            have = rob[N_MASKED].values.tolist() if N_MASKED in rob.coords else []
            absent.append(f"headline drop: n={n_masked} heads was not measured (have {have})")
    for name in ("hit", "mrr"):
        if name in ds.data_vars:
            parts.append(ds[name].to_dataset())
    if "routing_choice" in ds.data_vars:
        try:
            parts += [
                router_saturation(ds).to_dataset(),
                coactivation(ds).to_dataset(),
                specialization(ds),
            ]
        except InvalidInputError as exc:  # e.g. the record is NaN at every step
            absent.append(f"routing: {exc}")
    else:
        dense = int(ds.attrs.get("is_moe", 1)) == 0
        absent.append(
            "routing: dense model, no router"
            if dense
            else "routing: no 'routing_choice' (routing measure)"
        )
    out = (
        xr.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop")
        if parts
        else xr.Dataset()
    )
    for name, value in scalars.items():
        if name not in out:
            out[name] = value
    attrs = as_attrs(ds.attrs)
    attrs.update(
        mechmoe_result=SUMMARY_KIND,
        analysis_q=float(q),
        analysis_tau=float(tau),
        analysis_jaccard_k=int(jaccard_k) if jaccard_k is not None else -1,
        analysis_n_masked=int(n_masked),
        analysis_hit_k=int(hit_k) if hit_k is not None else -1,
        absent="; ".join(absent),
        analysis_versions=options_json(versions()),
    )
    out.attrs = attrs
    # variables copied from a store carry its on-disk encoding (zarr v2 codecs), which
    # another format cannot take: a summary is new data
    return out.drop_encoding()


def _summary(x: xr.Dataset) -> xr.Dataset:
    if not isinstance(x, xr.Dataset):
        raise InvalidInputError("expected a store's Dataset or a summarize_run() result")
    return x if x.attrs.get("mechmoe_result") == SUMMARY_KIND else summarize_run(x)


def headline(summary_or_store: xr.Dataset) -> dict[str, Any]:
    """The three headline figures of a run (a store is summarised first, with defaults).

    Returns
    -------
    dict
        ``backbone_share`` (top-q share of positive updates), ``consolidation_step``,
        ``hit_drop_top`` (relative HIT@k drop with the top ``n_masked`` heads masked, at
        the final step), ``hit_drop_random`` and ``hit_drop_random_std`` (the same with
        random heads, mean and std over seeds): floats, NaN where the store cannot give
        them. Then the options they were read with: ``q``, ``tau``, ``n_masked``,
        ``hit_k`` (None if unknown), ``drop_step`` (the step the drops are read at: the
        last one where the robustness measure ran; None if none), ``model`` and
        ``n_steps`` (checkpoints in the summary).
    """
    s = _summary(summary_or_store)

    def scalar(name: str) -> float:
        return float(s[name].values) if name in s else math.nan

    hit_k = int(s.attrs.get("analysis_hit_k", -1))
    drop_step = scalar("hit_drop_step")
    return {
        "backbone_share": scalar("backbone_share"),
        "consolidation_step": scalar("consolidation_step"),
        "hit_drop_top": scalar("hit_drop_top"),
        "hit_drop_random": scalar("hit_drop_random"),
        "hit_drop_random_std": scalar("hit_drop_random_std"),
        "q": float(s.attrs.get("analysis_q", math.nan)),
        "tau": float(s.attrs.get("analysis_tau", math.nan)),
        "n_masked": int(s.attrs.get("analysis_n_masked", -1)),
        "hit_k": hit_k if hit_k >= 0 else None,
        "drop_step": None if math.isnan(drop_step) else int(drop_step),
        "model": str(s.attrs.get("model", "")),
        "n_steps": int(s.sizes.get(STEP, 0)),
    }


def compare(a: xr.Dataset, b: xr.Dataset, names: Sequence[str] = ("MoE", "dense")) -> xr.Dataset:
    """Headline figures of two runs side by side, over a ``run`` dim labeled by ``names``.

    ``a`` and ``b`` are stores or :func:`summarize_run` results (a store is summarised
    with the defaults). Options used (q, tau, n_masked, HIT k) become per-run
    variables too, so a mismatch is visible.
    """
    names = tuple(names)
    if len(names) != 2 or len(set(names)) != 2:
        raise InvalidInputError(f"names={names!r}: give two different names, e.g. ('MoE', 'dense')")
    heads = [headline(x) for x in (a, b)]
    numeric = [
        "backbone_share",
        "consolidation_step",
        "hit_drop_top",
        "hit_drop_random",
        "hit_drop_random_std",
        "q",
        "tau",
    ]
    data: dict[str, Any] = {
        key: ((RUN,), np.array([h[key] for h in heads], dtype=np.float64)) for key in numeric
    }
    data["n_masked"] = ((RUN,), np.array([h["n_masked"] for h in heads], dtype=np.int64))
    data["hit_k"] = ((RUN,), np.array([h["hit_k"] or -1 for h in heads], dtype=np.int64))
    data["model"] = ((RUN,), np.array([h["model"] for h in heads], dtype=str))
    return xr.Dataset(
        data, coords={RUN: list(names)}, attrs={"mechmoe_result": "trajectory_comparison"}
    )


__all__ = [
    "LORENZ_POINTS",
    "SUMMARY_KIND",
    "compare",
    "headline",
    "summarize_run",
]
