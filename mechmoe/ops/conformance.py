"""Conformance: the six identities every adapter must satisfy on its model.

If these hold, the capture pass reads the model the way the model computes:

(a) ``logits``   — logits through the handle equal a plain HF forward;
(b) ``heads``    — the per-head vectors (plus the output bias) sum to the attention output
    (on layers with attention heads);
(c) ``experts``  — Σ over chosen experts of ``g_e · (W_down^e m_e + b_e)`` (plus the shared
    expert and a dense output bias) equals the FFN/MoE block output;
(d) ``residual`` — ``h[l-1] + A[l] = r[l]`` and ``r[l] + F[l] = h[l]`` (the next layer's input,
    or the final residual), with the family's residual multiplier in ``A`` and ``F``;
(e) ``unembed``  — the final norm (recomputed from the spec's kind and eps) of the final
    residual times ``W_U`` (times the family's logit scale) equals the logits;
(f) ``routing``  — the spec's routing rule (:func:`mechmoe.adapters.routing.route`, no
    request) applied to the captured router logits chooses the experts the router chose,
    with the weights it gave them.

Errors are compared against a tolerance relative to the reference's scale, so the same
check works on tiny random models and on real weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mechmoe.adapters.routing import route
from mechmoe.core.errors import InvalidInputError, NonFiniteError
from mechmoe.core.types import Capture, LayerCapture
from mechmoe.model import Model
from mechmoe.ops.norm import apply_norm

IDENTITIES: dict[str, str] = {
    "logits": "handle logits = plain HF forward",
    "heads": "Σ heads (+ bias) = attention output",
    "experts": "Σ g·W_down·m (+ shared) = FFN/MoE output",
    "residual": "h[l-1]+A[l] = r[l], r[l]+F[l] = h[l]",
    "unembed": "W_U · norm(h[L]) = logits",
    "routing": "route(router logits, spec rule) = the router's experts and weights",
}

#: Prompts the identities run on when none are given: a few short relational sentences.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "The opposite of hot is",
    "Tokyo is a city in",
    "A mixture of experts chooses a few experts for every",
)

_TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@dataclass(frozen=True)
class IdentityResult:
    """One identity's worst case over layers, prompts and positions."""

    identity: str
    description: str
    max_abs_error: float
    scale: float
    tolerance: float
    where: str = ""

    @property
    def passed(self) -> bool:
        """Within tolerance; a NaN or infinite error or scale never passes."""
        if not (math.isfinite(self.max_abs_error) and math.isfinite(self.scale)):
            return False
        return self.max_abs_error <= self.tolerance * max(1.0, self.scale)


@dataclass(frozen=True)
class ConformanceReport:
    model: str
    adapter: str
    results: tuple[IdentityResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def __getitem__(self, identity: str) -> IdentityResult:
        for r in self.results:
            if r.identity == identity:
                return r
        raise KeyError(identity)


class _Worst:
    """The worst error seen; the first NaN or infinity (in either side) sticks, with
    where it appeared, since no later comparison can pass."""

    def __init__(self) -> None:
        self.err, self.scale, self.where = 0.0, 0.0, ""

    def add(self, got: Tensor, ref: Tensor, valid: Tensor, where: str) -> None:
        if not math.isfinite(self.err):
            return
        got_v, ref_v = got.double()[valid], ref.double()[valid]
        if got_v.numel() == 0:
            return
        finite = bool(torch.isfinite(got_v).all()) and bool(torch.isfinite(ref_v).all())
        if not finite:
            self.err, self.where = math.nan, f"{where}: not finite"
            return
        err = float((got_v - ref_v).abs().max())
        self.scale = max(self.scale, float(ref_v.abs().max()))
        if err >= self.err:
            self.err, self.where = err, where


def _expert_sum(model: Model, li: int, cap: Capture) -> Tensor:
    lc = cap.layers[li]
    w = model.ffn_weights(li)
    # (b, p, slot, d) = Σ_k m_k · W_down^e[:, k] (+ the expert's bias) for each chosen e
    down = w.w_down[lc.expert_idx]
    per_slot = torch.einsum("bpsdk,bpsk->bpsd", down.double(), lc.acts.double())
    if w.b_down is not None:
        per_slot = per_slot + w.b_down.double()[lc.expert_idx]
    out = (lc.expert_gate.double()[..., None] * per_slot).sum(dim=2)
    shared = model.shared_weights(li)
    if shared is not None:
        sw, _ = shared
        s_out = lc.shared_acts.double() @ sw.w_down[0].double().T
        if lc.shared_gate is not None:
            s_out = lc.shared_gate.double()[..., None] * s_out
        out = out + s_out
    return out


def _routing_tables(model: Model, li: int, lc: LayerCapture) -> tuple[Tensor, Tensor]:
    """The weight of every expert per token, ``(b, p, experts)``, as the spec's rule gives it
    and as the router gave it (0 for experts not chosen): a different choice shows up as
    the weight of an expert one of them left out."""
    assert lc.router_logits is not None and lc.expert_weight is not None
    B, P, E = lc.router_logits.shape
    weights, index = route(
        lc.router_logits.reshape(B * P, E),
        model.routing_rule(li),
        bias=model.selection_bias(li),
        expert_scale=model.expert_scale(li),
        k=model.dims.top_k[li],
    )

    def table(w: Tensor, idx: Tensor) -> Tensor:
        out = torch.zeros((idx.shape[0], E), dtype=torch.float64, device=w.device)
        return out.scatter_(-1, idx.long(), w.double()).reshape(B, P, E)

    return table(weights, index), table(
        lc.expert_weight.reshape(B * P, -1), lc.expert_idx.reshape(B * P, -1)
    )


@torch.no_grad()
def check_model(
    model: Model,
    prompts: Sequence[str] | None = None,
    *,
    positions: str = "all",
    tolerance: float | None = None,
) -> ConformanceReport:
    """Run the six identities on ``prompts`` (default: a few built-in prompts).

    Examples
    --------
    >>> from mechmoe.testing import tiny_model
    >>> check_model(tiny_model("olmoe")).passed
    True
    """
    if prompts is not None and not list(prompts):
        raise InvalidInputError(
            "check_model got no prompts (an empty list); pass prompts, or None for the "
            "built-in ones"
        )
    prompts = list(prompts if prompts is not None else DEFAULT_PROMPTS)
    tol = tolerance if tolerance is not None else _TOL.get(model.dtype, 1e-5)
    batch = model.tokenize(prompts, positions=positions)
    try:
        cap = model.capture(batch)
    except NonFiniteError as exc:  # no identity can hold: every one fails, saying where
        where = f"not finite from {exc.where}" if exc.where else "not finite"
        failed = (
            IdentityResult(k, IDENTITIES[k], math.nan, math.nan, tol, where) for k in IDENTITIES
        )
        return ConformanceReport(model=model.name, adapter=model.spec.name, results=tuple(failed))
    valid = batch.valid
    b = torch.arange(batch.size, device=valid.device)[:, None].expand_as(batch.positions)
    worst = {k: _Worst() for k in IDENTITIES}

    ref_logits = model.hf_logits(batch)[b, batch.positions]
    worst["logits"].add(cap.logits, ref_logits, valid, "logits")

    n = cap.n_layers
    for li, lc in enumerate(cap.layers):
        if model.dims.has_heads(li):
            heads = lc.heads.double().sum(dim=2)
            b_o = model.b_O(li)
            if b_o is not None:
                heads = heads + b_o.double()
            worst["heads"].add(heads, lc.attn_raw, valid, f"layer {li}")
        if lc.kind == "moe":
            got, want = _routing_tables(model, li, lc)
            worst["routing"].add(got, want, valid, f"layer {li}")
        worst["experts"].add(_expert_sum(model, li, cap), lc.ffn_raw, valid, f"layer {li}")
        worst["residual"].add(
            lc.resid_pre.double() + lc.attn_out.double(), lc.resid_mid, valid, f"layer {li} (attn)"
        )
        nxt = cap.layers[li + 1].resid_pre if li + 1 < n else cap.final_resid
        worst["residual"].add(
            lc.resid_mid.double() + lc.ffn_out.double(), nxt, valid, f"layer {li} (ffn)"
        )

    z = apply_norm(model.final_norm, cap.final_resid).double() @ model.W_U.double().T
    if model.b_U is not None:
        z = z + model.b_U.double()
    worst["unembed"].add(model.scale_logits(z), cap.logits, valid, "final")

    results = tuple(
        IdentityResult(
            identity=k,
            description=IDENTITIES[k],
            max_abs_error=w.err,
            scale=w.scale,
            tolerance=tol,
            where=w.where,
        )
        for k, w in worst.items()
    )
    return ConformanceReport(model=model.name, adapter=model.spec.name, results=results)


__all__ = ["IDENTITIES", "ConformanceReport", "IdentityResult", "check_model"]
