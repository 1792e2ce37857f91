"""Gated-LPI attribution at every level: neuron, expert, head, attention and FFN layer.

The definitions are those of ``method.md`` (see docs/attribution.md): for a vector ``v``
added to a base residual, ``LPI(v | base) = log softmax(z(base + v))[w] −
log softmax(z(base))[w]`` with ``z`` the unembedding of the *frozen* final norm. Every
score is computed at the last token of each prompt.

Neurons use the fast exact path: a neuron's direction through the frozen norms does
not depend on the prompt, only its coefficient does, so its unembedding projection is
formed once per (layer, expert) and shared by every prompt that chose that expert.

Examples
--------
>>> from mechmoe.testing import tiny_model
>>> from mechmoe.ops.attribution import attribute
>>> ds = attribute(tiny_model("olmoe"), ["The capital of France is"], level="expert")
>>> ds["score"].dims
('layer', 'expert')
>>> int(ds["n_chosen"].sum())  # one prompt, 2 layers, top-2
4
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechmoe._types import EXPERT, HEAD, LAYER, NEURON, PROMPT
from mechmoe.core.progress import task
from mechmoe.core.provenance import provenance
from mechmoe.errors import InvalidInputError
from mechmoe.model import NormParams
from mechmoe.ops._lpi_kernels import shared_direction_lpi, vector_lpi
from mechmoe.ops.norm import frozen_stats

if TYPE_CHECKING:
    import xarray as xr

    from mechmoe.backends.base import Capture, Edit
    from mechmoe.model import Model

Level = Literal["neuron", "expert", "head", "attn", "ffn"]
Target = Literal["top1", "gold"]
#: Levels whose scores ``precision="bounded"`` may truncate; other levels always run exact
#: and record ``precision="exact"``.
BOUNDED_LEVELS: tuple[str, ...] = ("neuron",)
Precision = Literal["exact", "certified", "bounded"]

LEVELS: tuple[str, ...] = ("neuron", "expert", "head", "attn", "ffn")
#: Dim of a shared expert's neurons (Qwen2-MoE), kept apart from the routed experts'.
SHARED_NEURON = "shared_neuron"
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
        W_U = model.W_U.detach().float()
        b_U = model.b_U
        if reference_compat:
            norm = NormParams(kind="rmsnorm", weight=norm.weight, bias=None, eps=COMPAT_EPS)
            b_U = None
        return cls(final=norm, W_U=W_U, b_U=None if b_U is None else b_U.detach().float())

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


# ---- validation ------------------------------------------------------------------------
def _check_options(
    model: Model,
    prompts: Sequence[str],
    level: str,
    target: str,
    targets: Sequence[int | Sequence[int]] | None,
    precision: str,
    tolerance: float,
    memory_budget: int,
    batch_size: int,
) -> list[str]:
    if level not in LEVELS:
        raise InvalidInputError(f"level={level!r}: use one of {', '.join(LEVELS)}")
    if target not in ("top1", "gold"):
        raise InvalidInputError(
            f"target={target!r}: use 'top1' (the model's own prediction) or 'gold'"
        )
    if precision not in ("exact", "certified", "bounded"):
        raise InvalidInputError(
            f"precision={precision!r}: use 'exact' or 'certified' ('bounded' is its old name)"
        )
    if not (tolerance > 0 and np.isfinite(tolerance)):
        raise InvalidInputError(f"tolerance={tolerance!r} must be a positive number")
    if memory_budget < 2**20:
        raise InvalidInputError(f"memory_budget={memory_budget} bytes is below 1 MiB")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size={batch_size} must be at least 1")
    if level == "expert" and not model.dims.is_moe:
        raise InvalidInputError(
            f"level='expert' needs a MoE model, but {model.name} is dense (no layer has experts); "
            "use level='ffn' or 'neuron'"
        )
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InvalidInputError("no prompts given")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InvalidInputError(f"prompt {i} is a {type(prompt).__name__}, not a string")
        if not prompt.strip():
            raise InvalidInputError(f"prompt {i} is empty; every prompt needs at least one token")
    max_pos = model.dims.max_positions
    if max_pos is not None:
        for i, prompt in enumerate(prompts):
            n_tok = len(model.tokenizer(prompt, add_special_tokens=True)["input_ids"])
            if n_tok > max_pos:
                raise InvalidInputError(
                    f"prompt {i} ({prompt[:40]!r}…) has {n_tok} tokens, more than the model's "
                    f"context of {max_pos}; shorten it"
                )
    if target == "gold":
        if targets is None:
            raise InvalidInputError("target='gold' needs targets= (one token id per prompt)")
        if len(targets) != len(prompts):
            raise InvalidInputError(
                f"got {len(targets)} targets for {len(prompts)} prompts; give one per prompt"
            )
        vocab = model.dims.vocab
        for i, t in enumerate(targets):
            ids = [t] if isinstance(t, (int, np.integer)) else t
            if not isinstance(ids, (list, tuple)) or not ids:
                raise InvalidInputError(
                    f"target {i} ({t!r}, for prompt {prompts[i][:40]!r}) must be a token id or "
                    "a non-empty tuple of ids (one per gold object)"
                )
            for x in ids:
                if (
                    isinstance(x, bool)
                    or not isinstance(x, (int, np.integer))
                    or not 0 <= int(x) < vocab
                ):
                    raise InvalidInputError(
                        f"target {i} ({t!r}, for prompt {prompts[i][:40]!r}) is not a token id "
                        f"in [0, {vocab})"
                    )
    elif targets is not None:
        raise InvalidInputError("targets= is only used with target='gold'")
    return prompts


# ---- gold targets ---------------------------------------------------------------------------
#: With target="gold", a prompt may list several gold token ids (an item with several gold
#: objects); its target is the one the model ranks highest.
GOLD_RULE = (
    "of several gold ids, the one with the highest logit at the last token (the first "
    "listed on ties)"
)


def _gold_table(targets: Sequence[Any], device: Any) -> Tensor:
    """``(prompt, m)`` ids: each prompt's gold ids, padded by repeating its first id."""
    rows = [[int(t)] if isinstance(t, (int, np.integer)) else [int(x) for x in t] for t in targets]
    m = max(len(r) for r in rows)
    return torch.as_tensor(
        [r + [r[0]] * (m - len(r)) for r in rows], dtype=torch.long, device=device
    )


def _pick_gold(logits: Tensor, ids: Tensor) -> Tensor:
    """Per row, the id among ``ids[row]`` with the highest logit (first on ties)."""
    best = logits.gather(1, ids).argmax(1)  # argmax returns the first maximal index
    return ids.gather(1, best[:, None])[:, 0]


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
        self.stats: dict[str, int] = {"pairs": 0, "fallback": 0}
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
        for li in range(self.L):
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
            post = model.attn_out_norm(li)
            s_post = _post_sigma(post, rec["attn_raw"])
            vec = _shape(ro.final, _through_post(post, rec["heads"])) / (sigma * s_post)[:, None]
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
        scale = (sigma * s_post)[:, None]
        idx, gate, acts = self._routing(group, li)
        weights = model.ffn_weights(li)
        n, slots = idx.shape
        outs = torch.zeros((n, slots, model.dims.d_model), dtype=torch.float32, device=acts.device)
        for e in torch.unique(idx).tolist():
            b, s = torch.nonzero(idx == e, as_tuple=True)
            y = acts[b, s] @ weights.w_down[e].detach().float().T
            if rec["kind"] == "dense" and weights.b_down is not None:
                y = y + weights.b_down.detach().float()
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
            vec = _shape(ro.final, _through_post(post, y)) / (sigma * s_post)
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
        idx_np = idx.cpu().numpy()
        for e in np.unique(idx_np).tolist():
            b, s = np.nonzero(idx_np == e)
            bt, st = torch.as_tensor(b, device=idx.device), torch.as_tensor(s, device=idx.device)
            # Directions γ ⊙ W_down[:, k] through the frozen norms: prompt-independent.
            U = _shape(ro.final, _through_post(post, weights.w_down[e].detach().T))
            gm = gate[bt, st, None] * acts[bt, st]
            assert self.coef is not None
            self.coef[li, e, : gm.shape[1]] += gm.sum(0).double().cpu().numpy()
            c = gm * inv[bt]
            scores, bounds = shared_direction_lpi(
                U,
                ro.W_U,
                c,
                logp[bt],
                w[bt],
                precision=self.precision,
                tolerance=self.tolerance,
                budget=self.budget,
                stats=self.stats,
            )
            self._note_bounds(group.index[b], bounds)
            if self.precision != "exact" and self.bound_total is not None:
                self.bound_total[li, e, : bounds.shape[1]] += bounds.double().sum(0).cpu().numpy()
            self._store_pairs(group, li, b, e, scores)
        if self.I_sh and rec.get("shared_acts") is not None:
            sw, _ = model.shared_weights(li)  # type: ignore[misc]
            U = _shape(ro.final, _through_post(post, sw.w_down[0].detach().T))
            g = rec["shared_gate"]
            gm = rec["shared_acts"].float()
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


# ---- the public function ------------------------------------------------------------------
def attribute(
    model: Model,
    prompts: Sequence[str],
    *,
    level: Level,
    target: Target = "top1",
    targets: Sequence[int | Sequence[int]] | None = None,
    precision: Precision = "exact",
    tolerance: float = 1e-4,
    memory_budget: int = 4 * 2**30,
    reference_compat: bool = False,
    per_prompt: bool = False,
    batch_size: int = 16,
    interventions: Edit | Sequence[Edit] | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Gated-LPI scores of one level for a set of prompts, at each prompt's last token.

    Parameters
    ----------
    model
        A :class:`mechmoe.Model`.
    prompts
        The prompts; each is scored at its last token.
    level
        ``"neuron"`` (layer × expert × neuron; a dense layer is one expert),
        ``"expert"`` (layer × expert; MoE models only), ``"head"`` (layer × head), or
        ``"attn"`` / ``"ffn"`` (one score per layer for the attention / FFN sub-layer).
    target, targets
        ``"top1"``: the model's own top prediction; ``"gold"``: ``targets[i]`` is the
        token id for prompt ``i`` (see :func:`mechmoe.probes.first_token_ids`), or a
        tuple of ids when the prompt has several gold objects
        (:func:`mechmoe.probes.gold_token_ids`): then the target is the one whose
        logit is highest at the last token (the first listed on ties), so the scores
        explain the gold answer the model ranks best (the one HIT@k and MRR count).
    precision, tolerance
        ``"exact"`` sums the softmax over the whole vocabulary. ``"certified"``
        (``"bounded"`` is its old name; neuron level) takes it from four moments of the
        neuron's logit change with a proven bound of at most ``tolerance`` per score
        (``1e-4``; ``1e-6`` is below the fp32 rounding of the exact sum), summing
        exactly the pairs it cannot certify: ``score_bound`` bounds each item's error,
        ``prompt_bound`` each prompt's, ``attrs["bound"]`` is the largest and
        ``attrs["n_fallback"]`` counts the pairs summed exactly. Other levels are always
        exact and record ``attrs["precision"] = "exact"`` (``precision_requested`` keeps
        what was asked).
    memory_budget
        Bytes the engine's temporaries may take (the model and captures not counted).
    reference_compat
        Use the published code's final norm: RMS form with eps 1e-6 for every family,
        no β and no unembedding bias.
    per_prompt
        Also return ``score_per_prompt`` with a leading ``prompt`` dim; items a prompt
        did not score (experts it did not choose) are NaN there, distinct from 0.
    batch_size
        Prompts per forward pass. Up to 256 prompts are scored together, so each
        neuron projection is formed once per 256 prompts.
    interventions
        Edits passed to :meth:`Model.capture`; scores then describe the edited model.
    progress
        Report progress (:mod:`mechmoe.core.progress`): to the installed reporter (the
        CLI's), or on stderr when none is installed.

    Returns
    -------
    xarray.Dataset
        ``score``: mean over prompts, with unchosen experts counting as 0 and NaN for
        items the model does not have (a layer narrower than the widest one).
        ``n_chosen`` (expert and neuron levels): prompts that chose each expert.
        ``shared_score`` (Qwen2-MoE shared experts, expert and neuron levels).
        ``gated_act`` (neuron level): mean of ``g · m_k`` over prompts (unchosen = 0);
        its sign says which way the neuron's value vector was added.
        ``target`` / ``target_logprob``: the target token and its log-probability per
        prompt. Attributes record the model, options, the achieved bound and the norm
        treatment.
    """
    prompts = _check_options(
        model, prompts, level, target, targets, precision, tolerance, memory_budget, batch_size
    )
    n = len(prompts)
    readout = _Readout.of(model, reference_compat=reference_compat)
    scorer = _Scorer(
        model,
        level,
        n,
        readout,
        precision=precision,
        tolerance=tolerance,
        budget=int(memory_budget),
        per_prompt=per_prompt,
    )
    dev = model.device
    gold = None if targets is None else _gold_table(targets, dev)
    target_ids = np.zeros(n, dtype=np.int64)
    target_lp = np.zeros(n, dtype=np.float32)
    group_size = _group_size(n, batch_size, model.dims.vocab, int(memory_budget))
    n_batches = sum(-(-min(group_size, n - g0) // batch_size) for g0 in range(0, n, group_size))
    L = model.dims.n_layers
    n_groups = -(-n // group_size)
    with (
        torch.no_grad(),
        task(f"attribute {level}", total=n_batches + n_groups * L, show=progress) as bar,
    ):
        for g0 in range(0, n, group_size):
            g1 = min(n, g0 + group_size)
            parts = []
            for b0 in range(g0, g1, batch_size):
                cap = model.capture(
                    prompts[b0 : min(g1, b0 + batch_size)], interventions=interventions
                )
                parts.append(_squeeze(cap, level))
                bar.advance()
            group = _merge(parts, np.arange(g0, g1))
            w = group.logits.argmax(-1) if gold is None else _pick_gold(group.logits, gold[g0:g1])
            target_ids[g0:g1] = w.cpu().numpy()
            target_lp[g0:g1] = (
                torch.log_softmax(group.logits, -1).gather(1, w[:, None])[:, 0].cpu().numpy()
            )
            sigma = readout.sigma(group.final_resid)
            for li in range(L):
                scorer.score_layer(group, li, w, sigma)
                bar.advance()
    return _to_dataset(
        model,
        prompts,
        scorer,
        readout,
        level=level,
        target=target,
        target_ids=target_ids,
        target_lp=target_lp,
        precision=precision,
        tolerance=tolerance,
        reference_compat=reference_compat,
        batch_size=batch_size,
        interventions=interventions,
    )


def _to_dataset(
    model: Model,
    prompts: list[str],
    scorer: _Scorer,
    readout: _Readout,
    *,
    level: str,
    target: str,
    target_ids: np.ndarray,
    target_lp: np.ndarray,
    precision: str,
    tolerance: float,
    reference_compat: bool,
    batch_size: int,
    interventions: Any,
) -> xr.Dataset:
    import xarray as xr

    from mechmoe.backends.nnsight import as_edits

    d = model.dims
    dims = {
        "neuron": (LAYER, EXPERT, NEURON),
        "expert": (LAYER, EXPERT),
        "head": (LAYER, HEAD),
        "attn": (LAYER,),
        "ffn": (LAYER,),
    }[level]
    n = len(prompts)
    mean = np.where(scorer.exists, scorer.total / n, np.nan)
    data: dict[str, Any] = {"score": (dims, mean)}
    if scorer.rows is not None:
        data["score_per_prompt"] = ((PROMPT, *dims), scorer.rows)
    if scorer.bound_total is not None and scorer.precision != "exact":
        # The mean of per-prompt scores is within the mean of their bounds.
        data["score_bound"] = (dims, np.where(scorer.exists, scorer.bound_total / n, np.nan))
        data["prompt_bound"] = ((PROMPT,), scorer.prompt_bound)
        if scorer.I_sh:
            data["shared_score_bound"] = (
                (LAYER, SHARED_NEURON),
                np.where(scorer.sh_exists, scorer.sh_bound_total / n, np.nan),
            )
    if level in ("neuron", "expert"):
        n_chosen = scorer.n_chosen
        data["n_chosen"] = ((LAYER, EXPERT), n_chosen)
        if scorer.I_sh:
            sh_dims = (LAYER, SHARED_NEURON) if level == "neuron" else (LAYER,)
            data["shared_score"] = (
                sh_dims,
                np.where(scorer.sh_exists, scorer.sh_total / n, np.nan),
            )
            if scorer.sh_rows is not None:
                data["shared_score_per_prompt"] = ((PROMPT, *sh_dims), scorer.sh_rows)
    if scorer.coef is not None:
        data["gated_act"] = (dims, np.where(scorer.exists, scorer.coef / n, np.nan))
        if scorer.I_sh:
            data["shared_gated_act"] = (
                (LAYER, SHARED_NEURON),
                np.where(scorer.sh_exists, scorer.sh_coef / n, np.nan),
            )
    data["target"] = ((PROMPT,), target_ids)
    data["target_logprob"] = ((PROMPT,), target_lp)
    coords: dict[str, Any] = {
        PROMPT: np.array(prompts, dtype=object),
        LAYER: np.arange(d.n_layers),
        "layer_kind": ((LAYER,), np.array(d.layer_kinds, dtype=object)),
    }
    if level in ("neuron", "expert"):
        coords[EXPERT] = np.arange(scorer.E)
    if level == "neuron":
        coords[NEURON] = np.arange(scorer.I)
        if scorer.I_sh:
            coords[SHARED_NEURON] = np.arange(scorer.I_sh)
    if level == "head":
        coords[HEAD] = np.arange(d.n_heads)
    edits = as_edits(interventions)
    # Only levels whose kernel truncates the softmax can be bounded; the rest ran exact.
    done = precision if level in BOUNDED_LEVELS else "exact"
    attrs = provenance(
        model,
        probe=prompts,
        options={
            "level": level,
            "target_mode": target,
            "precision": done,
            "tolerance": float(tolerance),
            "reference_compat": bool(reference_compat),
            "batch_size": batch_size,
            "interventions": repr(edits) if edits else "",
        },
        method="Gated-LPI" if level == "neuron" else "LPI",
        position="last",
        bound=float(scorer.bound) if done != "exact" else 0.0,
        n_pairs=int(scorer.stats["pairs"]),
        n_fallback=int(scorer.stats["fallback"]),
        precision_requested=precision,
        gold_rule=GOLD_RULE if target == "gold" else "",
        norm_treatment=readout.norm_treatment(model, reference_compat=reference_compat),
        aggregation="mean over prompts; experts a prompt did not choose count as 0",
        shared_expert="separate variable shared_score (own sigmoid gate)" if scorer.I_sh else "",
        n_prompts=n,
    )
    return xr.Dataset(data, coords=coords, attrs=attrs)


__all__ = ["LEVELS", "SHARED_NEURON", "attribute"]
