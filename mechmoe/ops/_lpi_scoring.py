"""The scoring engine behind :func:`mechmoe.ops.attribution.attribute`.

The frozen final norm as a readout (:class:`_Readout`), a group of prompts as captured
at their last token (:class:`_Group`), and the per-level scorer of one group and one
layer (:class:`_Scorer`), which calls the tensor kernels of :mod:`mechmoe.ops._lpi_kernels`.
The public function validates options, plans the groups and builds the labeled result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechmoe.core.types import NormParams
from mechmoe.ops._lpi_kernels import (
    KernelCounts,
    TailContext,
    UnembedStats,
    shared_direction_blocks,
    shared_direction_lpi,
    vector_lpi,
)
from mechmoe.ops.norm import frozen_stats

if TYPE_CHECKING:
    from mechmoe.core.types import Capture
    from mechmoe.model import Model

#: Eps and norm form the published code uses for every family (``reference_compat``).
COMPAT_EPS = 1e-6
#: Prompts scored together (sharing each P) at least; captures still run ``batch_size`` at
#: a time. The group grows with the memory budget (:func:`_group_size`).
MAX_GROUP = 256


def _group_size(n: int, batch_size: int, vocab: int, budget: int) -> int:
    """Prompts scored together: all of them when the budget allows, so each P is formed once.

    A group's per-prompt temporaries are a few ``(prompt, vocab)`` fp32 rows per layer
    (base log-probabilities, probabilities, the vector levels' logits); 64 bytes per vocab
    entry and prompt keeps them within the budget.
    """
    return max(1, batch_size, min(n, max(MAX_GROUP, budget // (64 * vocab))))


# ---- the frozen norms ----------------------------------------------------------------
def _shape(params: NormParams, v: Tensor) -> Tensor:
    """The prompt-independent part of a frozen norm on a contribution: ``γ ⊙ centre(v)``."""
    v = v.float()
    if params.kind == "layernorm":
        v = v - v.mean(-1, keepdim=True)
    if params.weight is not None:
        v = v * params.weight.detach().float()
    return v


@dataclass(frozen=True)
class _Readout:
    """The frozen final norm and unembedding used by one call.

    ``final`` is the norm as the model defines it, or its RMS form with eps 1e-6 under
    ``reference_compat`` (then also without β and the unembedding bias, like the
    published code).
    """

    final: NormParams
    W_U: Float[Tensor, "vocab d_model"]
    b_U: Tensor | None

    @classmethod
    def of(cls, model: Model, *, reference_compat: bool) -> _Readout:
        norm = model.final_norm
        # the family's logit scale (Granite divides by logits_scaling) is part of z
        W_U = model.scale_logits(model.W_U.detach().float())
        b_U = model.b_U
        if reference_compat:
            norm = NormParams(kind="rmsnorm", weight=norm.weight, bias=None, eps=COMPAT_EPS)
            b_U = None
        if b_U is not None:
            b_U = model.scale_logits(b_U.detach().float())
        return cls(final=norm, W_U=W_U, b_U=b_U)

    def sigma(self, final_resid: Tensor) -> Tensor:
        """Frozen σ of the final norm, one per prompt, shape ``(n, 1)``."""
        return frozen_stats(self.final, final_resid).sigma

    def base_logp(self, base: Tensor, sigma: Tensor) -> Tensor:
        """``log softmax(z(base))`` with the final norm frozen at ``sigma``."""
        y = _shape(self.final, base) / sigma
        if self.final.bias is not None:
            y = y + self.final.bias.detach().float()
        z = y @ self.W_U.T
        if self.b_U is not None:
            z = z + self.b_U
        return torch.log_softmax(z, dim=-1)

    def norm_treatment(self, model: Model, *, reference_compat: bool) -> str:
        f = self.final
        parts = [
            f"final norm frozen at h[L]: {f.kind}, eps={f.eps:g}",
            "weight γ" if f.weight is not None else "no weight (γ=1)",
            "bias β" if f.bias is not None else "no bias",
            "mean-centred" if f.kind == "layernorm" else "not centred",
        ]
        if reference_compat:
            parts.append("reference_compat: RMS form, eps 1e-6, no β / unembedding bias")
        if model.spec.attn_out_norm or model.spec.ffn_out_norm:
            parts.append("post-norms frozen at each sub-layer output's statistics")
        return "; ".join(parts)


def _post_sigma(params: NormParams | None, raw: Tensor) -> Tensor:
    """Frozen σ of a post-norm at the actual sub-layer output (1 where there is none)."""
    if params is None:
        return torch.ones((raw.shape[0], 1), dtype=torch.float32, device=raw.device)
    return frozen_stats(params, raw).sigma


def _through_post(params: NormParams | None, v: Tensor) -> Tensor:
    return v.float() if params is None else _shape(params, v)


# ---- the scored group: what the capture gave, at the last token ----------------------
@dataclass
class _Group:
    """Captures of up to :data:`MAX_GROUP` prompts, squeezed to the last token."""

    index: np.ndarray  # positions of these prompts in the call
    layers: list[dict[str, Any]]
    final_resid: Tensor
    logits: Tensor


_EXPERT_FIELDS = (
    "resid_mid",
    "expert_idx",
    "expert_gate",
    "acts",
    "ffn_raw",
    "shared_acts",
    "shared_gate",
)
_FIELDS: dict[str, tuple[str, ...]] = {
    "head": ("resid_pre", "heads", "attn_raw"),
    "attn": ("resid_pre", "attn_out"),
    "ffn": ("resid_mid", "ffn_out"),
    "expert": _EXPERT_FIELDS,
    "neuron": _EXPERT_FIELDS,
}


def _squeeze(cap: Capture, level: str) -> tuple[list[dict[str, Any]], Tensor, Tensor]:
    layers = []
    for lc in cap.layers:
        rec: dict[str, Any] = {"kind": lc.kind}
        for name in _FIELDS[level]:
            value = getattr(lc, name)
            rec[name] = None if value is None else value[:, 0].detach()
        layers.append(rec)
    return layers, cap.final_resid[:, 0].detach().float(), cap.logits[:, 0].detach().float()


def _merge(parts: list[tuple[list[dict[str, Any]], Tensor, Tensor]], index: np.ndarray) -> _Group:
    n_layers = len(parts[0][0])
    layers = []
    for li in range(n_layers):
        rec: dict[str, Any] = {"kind": parts[0][0][li]["kind"]}
        for name, first in parts[0][0][li].items():
            if name == "kind":
                continue
            if first is None:
                rec[name] = None
                continue
            tensors = [p[0][li][name] for p in parts]
            if name in ("expert_idx", "expert_gate", "acts"):
                # Pad the slot dim in case batches differ (they do not today).
                width = max(t.shape[1] for t in tensors)
                tensors = [_pad_dim1(t, width) for t in tensors]
            rec[name] = torch.cat(tensors)
        layers.append(rec)
    return _Group(
        index=index,
        layers=layers,
        final_resid=torch.cat([p[1] for p in parts]),
        logits=torch.cat([p[2] for p in parts]),
    )


def _pad_dim1(t: Tensor, width: int) -> Tensor:
    if t.shape[1] == width:
        return t
    pad = torch.zeros(
        (t.shape[0], width - t.shape[1], *t.shape[2:]), dtype=t.dtype, device=t.device
    )
    return torch.cat([t, pad], dim=1)


# ---- per-level scoring of one group and one layer ----------------------------------------
class _Scorer:
    """Accumulates scores of one level over prompt groups."""

    def __init__(
        self,
        model: Model,
        level: str,
        n_prompts: int,
        readout: _Readout,
        *,
        precision: str,
        tolerance: float,
        budget: int,
        per_prompt: bool,
    ) -> None:
        self.model, self.level, self.n = model, level, n_prompts
        self.readout = readout
        self.precision, self.tolerance, self.budget = precision, tolerance, budget
        # The kernels' statistics of W_U (row norms, Gram), once per call.
        self.unembed = UnembedStats.of(self.readout.W_U, budget=budget)
        self.per_prompt = per_prompt
        d = model.dims
        self.L = d.n_layers
        self.E = max(d.n_experts)
        self.I = max(d.d_ffn)
        shape = {
            "neuron": (self.L, self.E, self.I),
            "expert": (self.L, self.E),
            "head": (self.L, d.n_heads),
            "attn": (self.L,),
            "ffn": (self.L,),
        }[level]
        self.shape = shape
        self.total = np.zeros(shape, dtype=np.float64)
        self.exists = np.zeros(shape, dtype=bool)
        self.rows = np.full((n_prompts, *shape), np.nan, dtype=np.float32) if per_prompt else None
        self.n_chosen = np.zeros((self.L, self.E), dtype=np.int64)
        # Σ over prompts of g·m per neuron: its sign says which way each neuron pushed.
        self.coef = np.zeros(shape, dtype=np.float64) if level == "neuron" else None
        self.bound = 0.0
        # certified mode: Σ over prompts of each item's bound, each prompt's largest bound,
        # and how many (prompt, neuron) pairs were scored / summed exactly
        self.bound_total = np.zeros(shape, dtype=np.float64) if level == "neuron" else None
        self.prompt_bound = np.zeros(n_prompts, dtype=np.float64)
        self.stats = KernelCounts()
        shared = [s for s in d.d_shared if s]
        self.I_sh = max(shared) if shared and level in ("neuron", "expert") else 0
        if self.I_sh:
            sh_shape = (self.L, self.I_sh) if level == "neuron" else (self.L,)
            self.sh_total = np.zeros(sh_shape, dtype=np.float64)
            self.sh_bound_total = np.zeros(sh_shape, dtype=np.float64)
            self.sh_exists = np.zeros(sh_shape, dtype=bool)
            self.sh_rows = (
                np.full((n_prompts, *sh_shape), np.nan, dtype=np.float32) if per_prompt else None
            )
            self.sh_coef = np.zeros(sh_shape, dtype=np.float64)
        # the family's residual multiplier (Granite) scales what every sub-layer adds
        self.rm = float(getattr(model, "residual_multiplier", 1.0))
        for li in range(self.L):
            if level == "head" and not d.has_heads(li):
                continue  # a token mixer without heads (Mamba): nothing to score
            if level == "neuron":
                self.exists[li, : d.n_experts[li], : d.d_ffn[li]] = True
                if self.I_sh and d.d_shared[li]:
                    self.sh_exists[li, : d.d_shared[li]] = True
            elif level == "expert":
                self.exists[li, : d.n_experts[li]] = True
                if self.I_sh and d.d_shared[li]:
                    self.sh_exists[li] = True
            else:
                self.exists[li] = True

    # -- storing
    def _store(self, group: _Group, li: int, scores: Tensor, where: tuple[Any, ...] = ()) -> None:
        """Add per-prompt ``scores`` (n, …) for layer ``li`` at index ``where`` after the layer."""
        s = scores.detach().double().cpu().numpy()
        self.total[(li, *where)] += s.sum(0)
        if self.rows is not None:
            self.rows[(group.index, li, *where)] = s

    def _store_pairs(self, group: _Group, li: int, b: np.ndarray, e: int, scores: Tensor) -> None:
        s = scores.detach().double().cpu().numpy()
        if self.level == "neuron":
            width = s.shape[1]
            self.total[li, e, :width] += s.sum(0)
            if self.rows is not None:
                self.rows[group.index[b], li, e, :width] = s
        else:
            self.total[li, e] += s.sum()
            if self.rows is not None:
                self.rows[group.index[b], li, e] = s

    def _store_shared(self, group: _Group, li: int, scores: Tensor) -> None:
        s = scores.detach().double().cpu().numpy()
        if self.level == "neuron":
            width = s.shape[1]
            self.sh_total[li, :width] += s.sum(0)
            if self.sh_rows is not None:
                self.sh_rows[group.index, li, :width] = s
        else:
            self.sh_total[li] += s.sum()
            if self.sh_rows is not None:
                self.sh_rows[group.index, li] = s

    # -- scoring
    def score_layer(self, group: _Group, li: int, w: Tensor, sigma: Tensor) -> None:
        rec = group.layers[li]
        ro, model = self.readout, self.model
        base = rec["resid_pre"] if self.level in ("head", "attn") else rec["resid_mid"]
        logp = ro.base_logp(base, sigma)
        if self.level == "attn":
            vec = _shape(ro.final, rec["attn_out"]) / sigma
            self._store(
                group, li, vector_lpi(vec[:, None], ro.W_U, logp, w, budget=self.budget)[:, 0]
            )
        elif self.level == "ffn":
            vec = _shape(ro.final, rec["ffn_out"]) / sigma
            self._store(
                group, li, vector_lpi(vec[:, None], ro.W_U, logp, w, budget=self.budget)[:, 0]
            )
        elif self.level == "head":
            if not model.dims.has_heads(li):
                return
            post = model.attn_out_norm(li)
            s_post = _post_sigma(post, rec["attn_raw"])
            vec = _shape(ro.final, _through_post(post, rec["heads"])) / (sigma * s_post)[:, None]
            vec = vec * self.rm
            scores = vector_lpi(vec, ro.W_U, logp, w, budget=self.budget)
            self._store(group, li, scores, (slice(None),))
        elif self.level == "expert":
            self._score_experts(group, li, w, sigma, logp)
        else:
            self._score_neurons(group, li, w, sigma, logp)

    def _routing(self, group: _Group, li: int) -> tuple[Tensor, Tensor, Tensor]:
        rec = group.layers[li]
        idx, gate = rec["expert_idx"], rec["expert_gate"].float()
        chosen = idx.detach().cpu().numpy()
        if rec["kind"] == "moe":
            for e in range(self.model.dims.n_experts[li]):
                self.n_chosen[li, e] += int((chosen == e).any(axis=1).sum())
        else:
            self.n_chosen[li, 0] += chosen.shape[0]
        return idx, gate, rec["acts"].float()

    def _score_experts(
        self, group: _Group, li: int, w: Tensor, sigma: Tensor, logp: Tensor
    ) -> None:
        rec, ro, model = group.layers[li], self.readout, self.model
        post = model.ffn_out_norm(li)
        s_post = _post_sigma(post, rec["ffn_raw"])
        scale = (sigma * s_post)[:, None] / self.rm
        idx, gate, acts = self._routing(group, li)
        weights = model.ffn_weights(li)
        n, slots = idx.shape
        outs = torch.zeros((n, slots, model.dims.d_model), dtype=torch.float32, device=acts.device)
        for e in torch.unique(idx).tolist():
            b, s = torch.nonzero(idx == e, as_tuple=True)
            y = acts[b, s] @ weights.w_down[e].detach().float().T
            if weights.b_down is not None:  # the expert's own bias, scaled by its gate
                y = y + weights.b_down[e].detach().float()
            outs[b, s] = gate[b, s, None] * y
        vec = _shape(ro.final, _through_post(post, outs)) / scale
        scores = vector_lpi(vec, ro.W_U, logp, w, budget=self.budget)  # (n, slot)
        idx_np = idx.cpu().numpy()
        for e in np.unique(idx_np).tolist():
            b, s = np.nonzero(idx_np == e)
            self._store_pairs(group, li, b, e, scores[torch.as_tensor(b), torch.as_tensor(s)])
        if self.I_sh and rec.get("shared_acts") is not None:
            sw, _ = model.shared_weights(li)  # type: ignore[misc]
            y = rec["shared_acts"].float() @ sw.w_down[0].detach().float().T
            if sw.b_down is not None:
                y = y + sw.b_down.detach().float()
            g = rec["shared_gate"]
            if g is not None:
                y = y * g.float().reshape(-1, 1)
            vec = _shape(ro.final, _through_post(post, y)) / (sigma * s_post) * self.rm
            self._store_shared(
                group, li, vector_lpi(vec[:, None], ro.W_U, logp, w, budget=self.budget)[:, 0]
            )

    def _score_neurons(
        self, group: _Group, li: int, w: Tensor, sigma: Tensor, logp: Tensor
    ) -> None:
        rec, ro, model = group.layers[li], self.readout, self.model
        post = model.ffn_out_norm(li)
        s_post = _post_sigma(post, rec["ffn_raw"])
        inv = 1.0 / (sigma * s_post)  # (n, 1)
        idx, gate, acts = self._routing(group, li)
        weights = model.ffn_weights(li)
        # Certified mode's per-layer inputs, shared by every expert of the layer.
        tail = (
            TailContext(logp.float().exp(), ro.W_U, unembed=self.unembed)
            if self.precision != "exact"
            else None
        )
        idx_np = idx.cpu().numpy()
        blocks, chosen, results = [], [], []
        for e in np.unique(idx_np).tolist():
            b, s = np.nonzero(idx_np == e)
            bt, st = torch.as_tensor(b, device=idx.device), torch.as_tensor(s, device=idx.device)
            # Directions γ ⊙ W_down[:, k] through the frozen norms: prompt-independent.
            U = _shape(ro.final, _through_post(post, weights.w_down[e].detach().T))
            # the coefficient of W_down[:, k] as added to the residual stream
            gm = gate[bt, st, None] * acts[bt, st] * self.rm
            assert self.coef is not None
            self.coef[li, e, : gm.shape[1]] += gm.sum(0).double().cpu().numpy()
            chosen.append((b, e))
            if self.precision == "exact":  # scored at once: one expert's P at a time
                results.append(
                    shared_direction_lpi(
                        U,
                        ro.W_U,
                        gm * inv[bt],
                        logp[bt],
                        w[bt],
                        budget=self.budget,
                        stats=self.stats,
                        unembed=self.unembed,
                    )
                )
            else:
                blocks.append((U, gm * inv[bt], bt))
        if blocks:
            # Every tier over all the experts' pairs at once (tiers 2-3 form P across experts).
            results = shared_direction_blocks(
                blocks,
                ro.W_U,
                logp,
                w,
                tolerance=self.tolerance,
                budget=self.budget,
                stats=self.stats,
                unembed=self.unembed,
                tail=tail,
            )
        for (b, e), (scores, bounds) in zip(chosen, results, strict=True):
            self._note_bounds(group.index[b], bounds)
            if self.precision != "exact" and self.bound_total is not None:
                self.bound_total[li, e, : bounds.shape[1]] += bounds.double().sum(0).cpu().numpy()
            self._store_pairs(group, li, b, e, scores)
        if self.I_sh and rec.get("shared_acts") is not None:
            sw, _ = model.shared_weights(li)  # type: ignore[misc]
            U = _shape(ro.final, _through_post(post, sw.w_down[0].detach().T))
            g = rec["shared_gate"]
            gm = rec["shared_acts"].float() * self.rm
            if g is not None:
                gm = gm * g.float().reshape(-1, 1)
            self.sh_coef[li, : gm.shape[1]] += gm.sum(0).double().cpu().numpy()
            c = gm * inv
            scores, bounds = shared_direction_lpi(
                U,
                ro.W_U,
                c,
                logp,
                w,
                precision=self.precision,
                tolerance=self.tolerance,
                budget=self.budget,
                stats=self.stats,
                unembed=self.unembed,
                tail=tail,
            )
            self._note_bounds(group.index, bounds)
            if self.precision != "exact":
                self.sh_bound_total[li, : bounds.shape[1]] += bounds.double().sum(0).cpu().numpy()
            self._store_shared(group, li, scores)

    def _note_bounds(self, rows: np.ndarray, bounds: Tensor) -> None:
        """Largest bound overall and per prompt (one host copy per call, not per pair)."""
        if self.precision == "exact" or not bounds.numel():
            return
        per_row = bounds.max(1).values.double().cpu().numpy()
        np.maximum.at(self.prompt_bound, rows, per_row)
        self.bound = max(self.bound, float(per_row.max()))
