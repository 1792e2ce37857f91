"""The report's figures: one function per figure, each returning a matplotlib Figure and a caption.

Every function takes the runs to show (one, or two side by side) and draws only what was
measured: a statistic a store cannot give is skipped with the reason. Figures are built
on :class:`matplotlib.figure.Figure` directly (no pyplot state), so this works headless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mechmoe._types import (
    EXPERT,
    EXPERT_B,
    LAYER,
    N_MASKED,
    POPULATION,
    QUANTILE,
    RELATION,
    STEP,
    K,
)
from mechmoe.report.headline import counted, total_heads

if TYPE_CHECKING:
    import xarray as xr
    from matplotlib.figure import Figure

#: Line colours of the first and second run.
COLORS = ("#c0392b", "#2471a3")

#: Relations with few possible answers are drawn with HIT@1 (HIT@10 is near 1 by type alone).
FEW_ANSWER = frozenset({"country_continent"})


@dataclass(frozen=True)
class Run:
    """One run: its store Dataset, its :func:`~mechmoe.analysis.summarize_run` and a label."""

    name: str
    ds: xr.Dataset
    summary: xr.Dataset

    @property
    def is_moe(self) -> bool:
        return int(self.ds.attrs.get("is_moe", 1 if "routing_choice" in self.ds else 0)) == 1


@dataclass(frozen=True)
class FigureSpec:
    """A drawn figure (``figure``) or the reason it was skipped (``skipped``)."""

    key: str
    title: str
    caption: str
    figure: Figure | None = None
    skipped: str = ""


def _fig(
    ncols: int = 1, nrows: int = 1, *, width: float = 5.2, height: float = 3.6
) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _legend_below(fig: Figure, ax: Any, ncol: int = 2) -> None:
    """One legend for the whole figure, under its panels (never on top of the data)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False, fontsize=8)


def _steps(run: Run) -> np.ndarray:
    return np.asarray(run.ds[STEP].values, dtype=float)


def _log_x(ax: Any, steps: np.ndarray) -> None:
    if steps.size and steps.min() > 0 and steps.max() / steps.min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel("training step")


def _n_units(run: Run) -> int:
    return int(run.summary["positive_updates"].size) if "positive_updates" in run.summary else 0


def _fmt(x: float, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:g}"


# ---- distribution of positive updates ---------------------------------------------------


def lorenz_figure(runs: Sequence[Run]) -> FigureSpec:
    title = "Lorenz curves of positive updates"
    have = [r for r in runs if "lorenz" in r.summary]
    if not have:
        return FigureSpec("lorenz", title, "", skipped="no neuron_lpi measure in the store")
    fig, axes = _fig()
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":", label="equal updates")
    parts = []
    for i, r in enumerate(have):
        lz = r.summary["lorenz"]
        ax.plot(lz[POPULATION].values, lz.values, color=COLORS[i], lw=2, label=r.name)
        q = float(r.summary.attrs.get("analysis_q", 0.01))
        parts.append(
            f"{r.name}: {counted(_n_units(r), 'neuron')}, Gini {float(r.summary['gini']):.3f}, top-{q:.0%} "
            f"share {_fmt(float(r.summary['backbone_share']))}"
        )
    ax.set_xlabel("share of neurons (sorted by PU, ascending)")
    ax.set_ylabel("cumulative share of positive updates")
    ax.legend(frameon=False)
    caption = (
        "For every FFN neuron n (each expert's neurons in the MoE, the MLP's in the dense model), "
        "S_t(n) is its Gated-LPI at checkpoint t averaged over the probe prompts (0 where its "
        "expert was not chosen); its positive updates are PU(n) = Σ_t max(S_t(n) − S_{t−1}(n), 0). "
        "The curve shows which share of all PU the least-updated neurons hold; the further it "
        "bends below the diagonal, the more the updates concentrate in few neurons. "
        + "; ".join(parts)
        + "."
    )
    return FigureSpec("lorenz", title, caption, fig)


def backbone_figure(runs: Sequence[Run]) -> FigureSpec:
    """Top-q backbone share as checkpoints accumulate, and over q at the end."""
    from mechmoe.analysis import backbone_share, positive_updates

    title = "Backbone share over steps"
    have = [r for r in runs if "neuron_score" in r.ds and "backbone_curve" in r.summary]
    if not have:
        return FigureSpec("backbone", title, "", skipped="no neuron_lpi measure in the store")
    fig, axes = _fig(2)
    ax, ax2 = axes[0]
    q = float(have[0].summary.attrs.get("analysis_q", 0.01))
    for i, r in enumerate(have):
        scores = r.ds["neuron_score"]
        steps = _steps(r)
        shares = [math.nan]
        for j in range(1, steps.size):
            pu = positive_updates(scores.isel({STEP: slice(0, j + 1)}))
            shares.append(backbone_share(pu, q) if float(pu.sum()) > 0 else math.nan)
        ax.plot(steps, shares, "o-", color=COLORS[i], label=r.name)
        curve = r.summary["backbone_curve"]
        ax2.plot(curve[QUANTILE].values, curve.values, "o-", color=COLORS[i], label=r.name)
    ax.axhline(0.45, color="0.5", ls=":", lw=1, label="paper: MoE > 45%")
    _log_x(ax, _steps(have[0]))
    ax.set_ylabel(f"top-{q:.0%} share of PU so far")
    ax.set_ylim(0, 1)
    ax.legend(frameon=False, fontsize=8)
    ax2.set_xscale("log")
    ax2.set_xlabel("fraction q of neurons (top by PU)")
    ax2.set_ylabel("share of PU, whole run")
    ax2.set_ylim(0, 1)
    ax2.legend(frameon=False, fontsize=8)
    caption = (
        f"Left: share of the positive updates accumulated up to each checkpoint that the top "
        f"{q:.0%} of neurons (at least one) hold, recomputed with only the checkpoints up to that "
        "step. Right: the same share for the whole run against the fraction q. The paper reports "
        "a top-1% share above 45% for OLMoE and no such core for OLMo (dotted line)."
    )
    return FigureSpec("backbone", title, caption, fig)


def consolidation_figure(runs: Sequence[Run]) -> FigureSpec:
    title = "Consolidation: agreement with the final checkpoint"
    have = [r for r in runs if "spearman_final" in r.summary]
    if not have:
        return FigureSpec("consolidation", title, "", skipped="no neuron_lpi measure in the store")
    fig, axes = _fig(2)
    ax, ax2 = axes[0]
    tau = float(have[0].summary.attrs.get("analysis_tau", 0.9))
    k = int(have[0].summary.attrs.get("analysis_jaccard_k", -1))
    parts = []
    for i, r in enumerate(have):
        steps = _steps(r)
        ax.plot(steps, r.summary["spearman_final"].values, "o-", color=COLORS[i], label=r.name)
        ax2.plot(steps, r.summary["jaccard_final"].values, "o-", color=COLORS[i], label=r.name)
        cstep = float(r.summary["consolidation_step"])
        if not math.isnan(cstep):
            ax.axvline(cstep, color=COLORS[i], ls="--", lw=1)
        parts.append(f"{r.name}: {'never' if math.isnan(cstep) else f'step {cstep:g}'}")
    ax.axhline(tau, color="0.5", ls=":", lw=1, label=f"τ = {tau:g}")
    for a, label in ((ax, "Spearman ρ vs final"), (ax2, f"Jaccard@{k} vs final")):
        _log_x(a, _steps(have[0]))
        a.set_ylabel(label)
        a.set_ylim(-0.1, 1.05)
        a.legend(frameon=False, fontsize=8)
    caption = (
        "Left: Spearman rank correlation of every neuron's S_t with its S at the final checkpoint. "
        f"Right: overlap (Jaccard index) of the top-{k} neurons by S_t with the final top-{k}. "
        f"The consolidation step (dashed) is the first checkpoint after which ρ stays ≥ τ = {tau:g}: "
        + "; ".join(parts)
        + ". The paper reports early consolidation for OLMoE and a volatile profile for OLMo."
    )
    return FigureSpec("consolidation", title, caption, fig)


# ---- behaviour ----------------------------------------------------------------------------


def hit_figure(runs: Sequence[Run]) -> FigureSpec:
    title = "Held-out HIT@k over training"
    have = [r for r in runs if "hit" in r.ds]
    if not have:
        return FigureSpec("hit", title, "", skipped="no hit measure in the store")
    fig, axes = _fig(len(have))
    ks = [int(k) for k in have[0].ds["hit"][K].values]
    big = max(ks)
    small = min(ks)
    for i, r in enumerate(have):
        ax = axes[0, i]
        hit = r.ds["hit"]
        steps = _steps(r)
        for j, rel in enumerate(hit[RELATION].values.tolist()):
            kk = small if rel in FEW_ANSWER else big
            ax.plot(steps, hit.sel({RELATION: rel, K: kk}).values, "o-", ms=3,
                    color=f"C{j}", label=f"{rel} (HIT@{kk})")  # fmt: skip
        _log_x(ax, steps)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("HIT@k on held-out prompts")
        ax.set_title(r.name)
        ax.legend(frameon=False, fontsize=7)
    caption = (
        f"Share of probe prompts whose gold object's first token is among the model's top-{big} "
        f"next-token predictions, per relation and checkpoint (relations with few possible answers, "
        f"such as continents, with HIT@{small}: knowing the answer type alone gives a high HIT@{big}). "
        "The probe prompts use templates that never occur in the training text."
    )
    return FigureSpec("hit", title, caption, fig)


def robustness_figure(runs: Sequence[Run]) -> FigureSpec:
    title = "Robustness: masking the top heads vs random heads"
    measured = [r for r in runs if "drop_top" in r.summary]
    if not measured:
        return FigureSpec("robustness", title, "", skipped="no robustness measure in the store")
    have = [r for r in measured if np.isfinite(r.summary["drop_top"].values).any()]
    if not have:
        return FigureSpec(
            "robustness",
            title,
            "",
            skipped="HIT@k before masking was 0 at every step, so no relative drop exists",
        )
    fig, axes = _fig(2)
    ax, ax2 = axes[0]
    n_masked = int(have[0].summary.attrs.get("analysis_n_masked", 10))
    hit_k = int(have[0].summary.attrs.get("analysis_hit_k", 10))
    parts = []
    counts: list[int] = []
    for i, r in enumerate(have):
        s = r.summary
        top, rnd, std = s["drop_top"], s["drop_random_mean"], s["drop_random_std"]
        done = np.flatnonzero(np.isfinite(top.values).any(axis=1))
        if not done.size:
            continue
        last = int(done[-1])
        ns = top[N_MASKED].values
        ax.plot(
            ns, top.isel({STEP: last}).values, "o-", color=COLORS[i], label=f"{r.name}: top heads"
        )
        m, sd = rnd.isel({STEP: last}).values, std.isel({STEP: last}).values
        ax.plot(ns, m, "s--", color=COLORS[i], alpha=0.7,
                label=f"{r.name}: random heads (mean ± std)")  # fmt: skip
        ax.fill_between(ns, m - sd, m + sd, color=COLORS[i], alpha=0.15)
        n_heads = total_heads(r.ds)
        of = counted(n_heads, "head") if n_heads else "head count not recorded"
        nn = n_masked if n_masked in ns else int(ns[-1])
        counts.append(nn)
        steps = _steps(r)
        ax2.plot(steps, top.sel({N_MASKED: nn}).values, "o-", color=COLORS[i])
        ax2.plot(steps, rnd.sel({N_MASKED: nn}).values, "s--", color=COLORS[i], alpha=0.7)
        parts.append(
            f"{r.name} ({of}): top-{nn} drop {_fmt(float(top.sel({N_MASKED: nn}).isel({STEP: last})))}"
            f" vs random {_fmt(float(rnd.sel({N_MASKED: nn}).isel({STEP: last})))}"
        )
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("heads masked (n)")
    ax.set_ylabel(f"relative HIT@{hit_k} drop, final step")
    ax.set_title("against n, final checkpoint", fontsize=9)
    ax2.axhline(0, color="0.6", lw=0.8)
    _log_x(ax2, _steps(have[0]))
    ax2.set_ylabel(f"relative HIT@{hit_k} drop")
    ax2.set_title(f"over training, n = {counts[0]}" if len(set(counts)) == 1 else "over training",
                  fontsize=9)  # fmt: skip
    _legend_below(fig, ax)
    caption = (
        "Heads are ranked by their Gated-LPI averaged over the probe; the top n are zeroed (their "
        f"slice of the attention output projection's input) and HIT@{hit_k} is measured again; "
        f"drop = 1 − HIT after / HIT before. Control: n heads drawn at random (mean ± std over "
        "seeds, dashed). Left: against n at the final checkpoint; right: over training, at the "
        "headline's n (where HIT before masking is near 0, early on, one prompt moves the drop "
        "a lot). "
        + "; ".join(parts)
        + ". The paper reports < 10% drop for OLMoE and > 50% for OLMo with the top 10 of their "
        "hundreds of heads masked."
    )
    return FigureSpec("robustness", title, caption, fig)


# ---- where attribution sits ---------------------------------------------------------------


def chosen_steps(steps: Sequence[int], n: int = 3) -> list[int]:
    """``n`` steps spread over the run in log space (first and last included).

    Examples
    --------
    >>> chosen_steps([1, 10, 100, 1000, 10000])
    [1, 100, 10000]
    """
    steps = sorted(int(s) for s in steps)
    if len(steps) <= n:
        return steps
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, n)).astype(int))
    return [steps[i] for i in idx]


def heatmap_figure(runs: Sequence[Run]) -> FigureSpec:
    title = "Gated-LPI by layer and expert at chosen steps"
    have = [r for r in runs if "expert_score" in r.ds]
    if not have:
        return FigureSpec("heatmap", title, "", skipped="no expert_lpi measure in the store")
    picks = {r.name: chosen_steps(r.ds[STEP].values.tolist()) for r in have}
    ncols = max(len(p) for p in picks.values())
    fig, axes = _fig(ncols, len(have), width=3.4, height=2.8)
    for i, r in enumerate(have):
        score = r.ds["expert_score"]
        vmax = float(np.nanmax(np.abs(score.sel({STEP: picks[r.name]}).values))) or 1.0
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(picks[r.name]):
                ax.set_axis_off()
                continue
            step = picks[r.name][j]
            data = score.sel({STEP: step}).transpose(LAYER, EXPERT).values
            im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                           interpolation="nearest")  # fmt: skip
            ax.set_title(f"{r.name} · step {step}", fontsize=9)
            if r.is_moe:
                ax.set_xlabel("expert")
            else:
                ax.set_xticks([0], ["MLP"])
                ax.set_xlabel("the layer's one MLP block")
            ax.set_yticks(range(data.shape[0]), [str(x) for x in score[LAYER].values])
            ax.set_ylabel("layer")
        fig.colorbar(im, ax=axes[i, :].tolist(), shrink=0.8, label="Gated-LPI")
    caption = (
        "Gated-LPI of each layer's experts (the dense model: its one MLP block), averaged over the "
        "probe prompts with 0 where the expert was not chosen, at early, middle and final "
        "checkpoints. Red: the block raises the log-probability of the predicted token; blue: "
        "it lowers it. One colour scale per model."
    )
    return FigureSpec("heatmap", title, caption, fig)


# ---- routing (MoE only) -------------------------------------------------------------------


def routing_figure(runs: Sequence[Run]) -> FigureSpec:
    title = "Expert load and router saturation over training"
    have = [
        r for r in runs if r.is_moe and ("expert_load" in r.ds or "router_saturation" in r.summary)
    ]
    if not have:
        return FigureSpec(
            "routing", title, "", skipped="no MoE run with expert_load / routing measures"
        )
    r = have[0]
    fig, axes = _fig(2)
    ax, ax2 = axes[0]
    steps = _steps(r)
    unused: list[str] = []
    if "expert_load" in r.ds:
        load = r.ds["expert_load"]
        n_exp = load.sizes[EXPERT]
        # the spread of the load over experts: max/min share per layer and the uniform line
        for li, layer in enumerate(load[LAYER].values.tolist()):
            per = load.sel({LAYER: layer}).transpose(STEP, EXPERT).values
            ax.plot(steps, per.max(axis=1), "-", color=f"C{li}", label=f"layer {layer}")
            ax.plot(steps, per.min(axis=1), "--", color=f"C{li}", alpha=0.7)
            unused.append(f"{int((per[-1] == 0).sum())} in layer {layer}")
        ax.axhline(1 / n_exp, color="0.4", ls=":", lw=1)
        ax.set_ylabel("share of a layer's routing slots")
        ax.set_title(f"most-used expert (solid), least-used (dashed), uniform 1/{n_exp} (dotted)",
                     fontsize=8)  # fmt: skip
        _legend_below(fig, ax, ncol=min(8, load.sizes[LAYER]))
    else:
        ax.set_axis_off()
    _log_x(ax, steps)
    if "router_saturation" in r.summary:
        sat = r.summary["router_saturation"]
        for li, layer in enumerate(sat[LAYER].values.tolist()):
            ax2.plot(
                steps,
                sat.sel({LAYER: layer}).values,
                "o-",
                ms=3,
                color=f"C{li}",
                label=f"layer {layer}",
            )
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("router saturation vs final")
        ax2.set_title("agreement of the chosen experts with the final checkpoint", fontsize=8)
        _log_x(ax2, steps)
        if "expert_load" not in r.ds:
            _legend_below(fig, ax2, ncol=min(8, sat.sizes[LAYER]))
    else:
        ax2.set_axis_off()
    caption = (
        f"{r.name}. Left: the largest and smallest share of a layer's routing slots any expert "
        "receives on the probe tokens (a balanced router keeps both near the uniform line; a "
        "least-used share of 0 means some expert got no slot). Right: router saturation, the mean "
        "over probe tokens of |experts chosen at t ∩ experts chosen at the final checkpoint| / k: "
        "how settled the routing is."
        + (f" Experts with no slot at the final checkpoint: {', '.join(unused)}." if unused else "")
    )
    return FigureSpec("routing", title, caption, fig)


def coactivation_figure(runs: Sequence[Run]) -> FigureSpec:
    title = "Expert co-activation at the final checkpoint"
    have = [r for r in runs if r.is_moe and "coactivation" in r.summary]
    if not have:
        return FigureSpec("coactivation", title, "", skipped="no MoE run with the routing measure")
    r = have[0]
    co = r.summary["coactivation"]
    layers = co[LAYER].values.tolist()
    fig, axes = _fig(len(layers), width=3.2, height=3.0)
    im = None
    idle: list[str] = []
    for j, layer in enumerate(layers):
        ax = axes[0, j]
        data = co.sel({LAYER: layer}).transpose(EXPERT, EXPERT_B).values
        never = [str(e) for e, row in zip(co[EXPERT].values, data, strict=True)
                 if np.isnan(row).all()]  # fmt: skip
        if never:
            idle.append(f"layer {layer}: {', '.join(never)}")
        im = ax.imshow(data, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("expert b")
        ax.set_ylabel("expert e")
    if im is not None:
        fig.colorbar(im, ax=axes[0, :].tolist(), shrink=0.8, label="P(b chosen | e chosen)")
    caption = (
        f"{r.name}. Row e, column b: of the probe tokens that chose expert e, the share that also "
        "chose expert b (the diagonal is left blank, and so is the row of an expert no probe "
        "token chose). Bright off-diagonal cells are experts that work in pairs."
        + (f" Experts no probe token chose: {'; '.join(idle)}." if idle else "")
    )
    return FigureSpec("coactivation", title, caption, fig)


FIGURES = (
    lorenz_figure,
    backbone_figure,
    consolidation_figure,
    hit_figure,
    robustness_figure,
    heatmap_figure,
    routing_figure,
    coactivation_figure,
)

__all__ = ["FIGURES", "FigureSpec", "Run", "chosen_steps"]
