"""The adapter spec: a frozen, declarative description of one model family.

A spec says *where* things are (module paths relative to the model or to one decoder
layer) and *which rule* the family follows (norm kind, how its router chooses and weighs
experts, how its experts are stored, which layers are MoE or attention, which scalars
scale the residual stream). The engine reads these fields; it never asks which family a
model belongs to.

Paths are dotted attribute paths as accepted by ``torch.nn.Module.get_submodule``.
"Config keys" are tuples of candidate attribute names on the HF config, tried in order,
so one spec covers config classes that spell a field differently. docs/adapters.md
("Describe a new router") walks through every field with a worked example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mechmoe._types import NormKind, WeightLayout

ConfigKeys = tuple[str, ...]
#: A number read from the config (the first of the keys it defines) or fixed in the spec.
Number = ConfigKeys | float | int

#: The parts of a router's output, in the order its module returns them:
#: ``logits`` (rows, experts); ``weights`` / ``index`` (rows, k) for the chosen experts;
#: ``table`` (rows, experts): the weight of every expert, 0 where it was not chosen (Llama-4).
RouterField = Literal["logits", "weights", "index", "table"]


@dataclass(frozen=True, kw_only=True)
class NormSpec:
    """How a norm computes its output.

    Parameters
    ----------
    kind
        ``"rmsnorm"``: ``γ ⊙ x / sqrt(mean(x²) + eps)``; ``"layernorm"``:
        ``γ ⊙ (x − mean(x)) / sqrt(var(x) + eps) + β``.
    eps
        Config keys to read eps from, or a fixed float where the family hard-codes it.
    weight, bias
        Whether the norm has a learnt scale γ / shift β (OLMo v1 has neither).
    """

    kind: NormKind
    eps: ConfigKeys | float = ("rms_norm_eps",)
    weight: bool = True
    bias: bool = False


@dataclass(frozen=True, kw_only=True)
class Factor:
    """A scalar of the residual stream or the router, read from the config or fixed.

    ``divide=True`` divides by the value instead of multiplying (Granite divides its
    logits by ``logits_scaling``); the engine applies it exactly as the family does.
    """

    value: Number
    divide: bool = False


@dataclass(frozen=True, kw_only=True)
class LayerSchedule:
    """Which decoder layers have a feature (an MoE block, attention heads).

    A layer has it when every condition that is set holds; config keys are read from the
    model's config. With no condition set, every layer has it.

    Parameters
    ----------
    start, end
        Layers from ``start`` on (DeepSeek's ``first_k_dense_replace``, AFMoE's
        ``num_dense_layers``), up to and including ``end``.
    period, offset
        ``layer % period == offset % period`` (Jamba: ``expert_layer_period`` /
        ``expert_layer_offset``; ``offset=-1`` is "the last layer of each period", as
        Qwen-MoE's ``(layer + 1) % decoder_sparse_step == 0``).
    listed, unlisted
        A config list of the layer indices that have it (Llama-4's ``moe_layers``) or
        that do not (Qwen-MoE's ``mlp_only_layers``).
    types, type_is
        A config list with one entry per layer (Jamba's ``layers_block_type``, Kimi's
        ``mlp_layer_types``) and the entries that mean "has it".
    """

    start: ConfigKeys | int = 0
    end: ConfigKeys | int | None = None
    period: ConfigKeys | int | None = None
    offset: ConfigKeys | int = 0
    listed: ConfigKeys | None = None
    unlisted: ConfigKeys | None = None
    types: ConfigKeys | None = None
    type_is: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.types is None) != (not self.type_is):
            raise ValueError("LayerSchedule: give types= and type_is= together")


@dataclass(frozen=True, kw_only=True)
class DenseMLPSpec:
    """A dense (or shared-expert) MLP made of separate projections.

    Paths are relative to the decoder layer. ``gate`` is ``None`` for an ungated MLP
    (GPT-2: ``act(W_in x)``); otherwise neurons are ``act(W_gate x) ⊙ (W_up x)``.
    ``up`` is the input projection of an ungated MLP. ``gate_up`` instead names one
    fused projection whose output holds the gate half then the up half (Granite's
    ``input_linear``); then ``gate`` and ``up`` are not read. ``layout`` says whether
    weights are stored ``(out, in)`` (``nn.Linear``) or ``(in, out)`` (GPT-2's ``Conv1D``).
    """

    gate: str | None = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"
    act: str = "mlp.act_fn"
    gate_up: str | None = None
    layout: WeightLayout = "linear"
    #: The name of a transformers activation (``ACT2FN``) for an MLP that calls it
    #: directly instead of holding it (LFM2-MoE's ``F.silu``); then ``act`` is not read.
    act_name: str | None = None

    def paths(self) -> tuple[str, ...]:
        """Every module path this MLP reads."""
        inputs = (self.gate_up,) if self.gate_up else tuple(p for p in (self.gate, self.up) if p)
        return (*inputs, self.down) + (() if self.act_name else (self.act,))


@dataclass(frozen=True, kw_only=True)
class GroupSpec:
    """Group-limited selection (DeepSeek-V2/V3, GLM-4-MoE).

    Experts are split into ``n_group`` equal groups; each group gets a score from its
    experts' selection scores (``"max"``: the largest; ``"top2_sum"``: the sum of the two
    largest), the ``topk_group`` best groups are kept and the others' experts are
    excluded from the top-k.
    """

    n_group: ConfigKeys | int = ("n_group",)
    topk_group: ConfigKeys | int = ("topk_group",)
    score: Literal["max", "top2_sum"] = "top2_sum"
    #: Config keys of a selection-method name and the names that mean "group-limited"
    #: (DeepSeek-V2's ``topk_method``: ``"group_limited_greedy"``; its ``"greedy"`` is
    #: plain top-k); ``None``: groups always apply.
    method: ConfigKeys | None = None
    method_is: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.method is None) != (not self.method_is):
            raise ValueError("GroupSpec: give method= and method_is= together")


@dataclass(frozen=True, kw_only=True)
class RouterSpec:
    """How a router turns its logits into the chosen experts and their weights.

    The default is OLMoE's rule: softmax over all experts in float32, top-k, weights
    renormalised where the config's ``norm_topk_prob`` says so.

    Parameters
    ----------
    score
        ``"softmax"`` or ``"sigmoid"``: the score of an expert.
    select
        ``"score"``: top-k of the scores over all experts (plus ``selection_bias``,
        within the kept ``groups``); the weights are the chosen experts' scores.
        ``"logits"``: top-k of the raw logits, then ``score`` over the k chosen logits
        only (GPT-OSS, Granite: softmax over the k; Llama-4: sigmoid of each).
        ``"sparsemixer"``: PhiMoE's SparseMixer (in eval): rank by rank, the best
        remaining expert is chosen and weighted by the softmax over the remaining experts
        whose logit is within the relative band ``band`` of its own. This one rule is a
        named selector: it cannot be stated from the other parts.
    selection_bias
        A parameter or buffer of the router module (a path relative to it) added to the
        scores for choosing only (DeepSeek-V3's ``e_score_correction_bias``; ERNIE-4.5's
        ``moe_statics.e_score_correction_bias``, stored ``(1, experts)``, is read flat).
    params_on
        Where ``selection_bias`` and ``expert_scale`` live: ``"router"`` (paths relative
        to the router module) or ``"ffn"`` (relative to the FFN module: MiniMax-M2 keeps
        its bias on the MoE block and passes it to the router as its second argument).
    groups
        Group-limited selection, or ``None``.
    renormalize, renorm_eps, renorm_min
        Whether the chosen weights are divided by their sum (``True``/``False`` or config
        keys of a flag: a flag missing from the config means no), with ``renorm_eps``
        added to the sum (DeepSeek-V3: 1e-20) and the sum clamped at ``renorm_min`` from
        below (ERNIE-4.5's ``moe_norm_min``).
    scale
        A factor on every routing weight (``routed_scaling_factor``), or ``None``.
    expert_scale
        A router parameter (path relative to it) holding one factor per expert, applied
        to that expert's weight, or ``None``.
    apply_to
        ``"output"``: the weight multiplies the expert's output (most families);
        ``"input"``: it multiplies the token before the expert (Llama-4), so it sits
        inside the expert's activations.
    float32, weights_dtype
        Whether scores are computed in float32 (else in the logits' dtype), and the dtype
        of the weights the router hands the experts (``"float32"`` or the model's).
    sorted
        Whether the family's top-k sorts the chosen experts by score (``torch.topk``'s
        ``sorted``); the engine keeps the same slot order.
    band
        SparseMixer's relative band (config keys of ``router_jitter_noise``); the band is
        twice the value, as in the family's code.
    returns
        What the router module returns, in order (:data:`RouterField`).
    """

    score: Literal["softmax", "sigmoid"] = "softmax"
    select: Literal["score", "logits", "sparsemixer"] = "score"
    selection_bias: str | None = None
    params_on: Literal["router", "ffn"] = "router"
    groups: GroupSpec | None = None
    renormalize: bool | ConfigKeys = ("norm_topk_prob",)
    renorm_eps: float = 0.0
    renorm_min: Number | None = None
    scale: Number | None = None
    expert_scale: str | None = None
    apply_to: Literal["output", "input"] = "output"
    float32: bool = True
    weights_dtype: Literal["float32", "model"] = "model"
    sorted: bool = True
    band: Number | None = None
    returns: tuple[RouterField, ...] = ("logits", "weights", "index")

    def __post_init__(self) -> None:
        if "logits" not in self.returns:
            raise ValueError("RouterSpec.returns must include 'logits'")
        if "table" not in self.returns and not {"weights", "index"} <= set(self.returns):
            raise ValueError("RouterSpec.returns needs 'weights' and 'index', or 'table'")
        if self.select == "sparsemixer" and self.band is None:
            raise ValueError("select='sparsemixer' needs band= (e.g. ('router_jitter_noise',))")
        if self.select != "score" and (self.selection_bias or self.groups):
            raise ValueError(
                "a selection bias or groups apply to select='score' (top-k of the scores)"
            )


@dataclass(frozen=True, kw_only=True)
class GLUSpec:
    """A gated activation other than ``act(gate) ⊙ up`` (GPT-OSS, DeepSeek-V4).

    Neurons are ``f(clamp(gate, max=limit)) ⊙ (clamp(up, −limit, limit) + up_offset)``
    where ``f(g) = g · σ(alpha · g)`` when ``alpha`` is set, else the experts' ``act``.
    ``limit=None`` clamps nothing.
    """

    alpha: Number | None = None
    limit: Number | None = None
    up_offset: float = 0.0


@dataclass(frozen=True, kw_only=True)
class MoESpec:
    """A sparse MoE block: its router, its routing rule, its experts, its shared expert.

    Parameters
    ----------
    router
        The router module (its output is described by ``routing.returns``).
    routing
        The routing rule (:class:`RouterSpec`).
    experts
        The module holding the experts' 3-D weights ``gate_up`` and ``down`` and the
        activation ``act`` (a callable attribute).
    layout, split
        ``"fused"``: ``gate_up (E, 2I, d)``, ``down (E, d, I)`` (transformers' default);
        ``"transposed"``: ``gate_up (E, d, 2I)``, ``down (E, I, d)`` (GPT-OSS, Llama-4).
        ``split``: the gate and up columns as two halves (gate first) or
        ``"interleaved"`` (gate at even, up at odd positions: GPT-OSS).
    gate_up_bias, down_bias
        Per-expert biases on the experts module (GPT-OSS), or ``None``. An expert's down
        bias belongs to the expert (it is scaled by the routing weight), not to a neuron.
    glu
        A non-standard gated activation (:class:`GLUSpec`), or ``None``.
    output
        ``"sum"``: the experts module returns the weighted sum over the chosen experts;
        ``"stacked"``: it returns every expert's output stacked ``(E·rows, d)`` and the
        block sums them (Llama-4).
    n_experts, top_k
        Config keys; ``top_k`` may name a per-layer list.
    layers
        Which layers are MoE (:class:`LayerSchedule`); ``None``: those where ``router``
        resolves. Either way the other layers use the spec's ``dense`` MLP.
    shared, shared_gate, shared_in_ffn
        A shared expert (always active), the ``Linear(d, 1)`` whose sigmoid scales it
        (Qwen2-MoE; ``None``: ungated), and whether it sits inside the FFN module (its
        output is part of the module's) or beside it, its output added to the module's
        (Granite-MoE-Shared's ``shared_mlp``).
    """

    router: str = "mlp.gate"
    routing: RouterSpec = field(default_factory=RouterSpec)
    experts: str = "mlp.experts"
    gate_up: str = "gate_up_proj"
    down: str = "down_proj"
    layout: Literal["fused", "transposed"] = "fused"
    split: Literal["halves", "interleaved"] = "halves"
    gate_up_bias: str | None = None
    down_bias: str | None = None
    act: str | None = "act_fn"
    glu: GLUSpec | None = None
    output: Literal["sum", "stacked"] = "sum"
    n_experts: ConfigKeys = ("num_experts", "num_local_experts", "n_routed_experts")
    top_k: ConfigKeys = ("num_experts_per_tok",)
    layers: LayerSchedule | None = None
    shared: DenseMLPSpec | None = None
    shared_gate: str | None = None
    shared_in_ffn: bool = True

    def __post_init__(self) -> None:
        if self.act is None and (self.glu is None or self.glu.alpha is None):
            raise ValueError("MoESpec: act=None needs glu=GLUSpec(alpha=...) for the activation")
        if self.shared_gate and self.shared is None:
            raise ValueError("MoESpec: shared_gate without a shared expert")


@dataclass(frozen=True, kw_only=True)
class AdapterSpec:
    """Everything mechmoe needs to know about one model family.

    The residual-stream bookkeeping is the same for every family:
    ``r[l] = h[l-1] + A[l]`` and ``h[l] = r[l] + F[l]``. Families differ only in where
    norms sit, which these fields record:

    - ``ffn_in_norm``: the pre-FFN norm; its *input* is ``r[l]`` and its output is the
      FFN input. ``None`` when the FFN reads the residual directly (OLMo-2).
    - ``attn_out_norm`` / ``ffn_out_norm``: norms applied to a sub-layer's output before
      it is added to the residual (OLMo-2). ``None`` elsewhere.
    - ``residual_scale``: a factor on both sub-layers' outputs before they are added
      (Granite's ``residual_multiplier``), so ``A[l]`` and ``F[l]`` include it.
    - ``logit_scale``: a factor on the logits (Granite divides by ``logits_scaling``).

    Hybrid stacks: layers whose token mixer has no attention heads (Mamba, linear
    attention) add the output of ``other_mixer`` as ``A[l]`` and have no heads;
    ``attention_layers`` says which layers have attention (``None``: those where
    ``attn_out_proj`` resolves).
    """

    name: str
    architectures: tuple[str, ...]
    description: str = ""
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    attn_out_proj: str = "self_attn.o_proj"
    attn_out_layout: WeightLayout = "linear"
    attn_out_norm: str | None = None
    other_mixer: str | None = None
    attention_layers: LayerSchedule | None = None
    ffn_in_norm: str | None = "post_attention_layernorm"
    ffn: str = "mlp"
    ffn_out_norm: str | None = None
    norm: NormSpec = field(default_factory=lambda: NormSpec(kind="rmsnorm"))
    moe: MoESpec | None = None
    dense: DenseMLPSpec | None = None
    residual_scale: Factor | None = None
    logit_scale: Factor | None = None
    n_heads: ConfigKeys = ("num_attention_heads", "n_head")
    head_dim: ConfigKeys = ("head_dim",)
    d_model: ConfigKeys = ("hidden_size", "n_embd")
    n_layers: ConfigKeys = ("num_hidden_layers", "n_layer")

    def __post_init__(self) -> None:
        if not self.architectures:
            raise ValueError(f"adapter {self.name!r} lists no architectures")
        if self.moe is None and self.dense is None:
            raise ValueError(f"adapter {self.name!r} has neither a MoE nor a dense FFN spec")
        if self.attention_layers is not None and self.other_mixer is None:
            raise ValueError(
                f"adapter {self.name!r}: attention_layers= needs other_mixer= for the other layers"
            )


_MISSING = object()


def config_value(config: Any, keys: ConfigKeys | float | int | bool, *, what: str) -> Any:
    """Read the first of ``keys`` that the HF config defines (or return a fixed value)."""
    if not isinstance(keys, tuple):
        return keys
    for key in keys:
        value = getattr(config, key, _MISSING)
        if value is not _MISSING and value is not None:
            return value
    from mechmoe.core.errors import SpecMismatchError

    raise SpecMismatchError(
        f"the model config has no {what} (looked for {', '.join(keys)}); "
        "fix the adapter spec's config keys for this family"
    )


def schedule_has(schedule: LayerSchedule, config: Any, layer: int, n_layers: int) -> bool:
    """Whether ``layer`` has the feature ``schedule`` describes, for this config."""

    def num(keys: ConfigKeys | int, what: str) -> int:
        return int(config_value(config, keys, what=what))

    def seq(keys: ConfigKeys, what: str) -> list[Any]:
        value = config_value(config, keys, what=what)
        return list(value)

    if layer < num(schedule.start, "first layer of the schedule"):
        return False
    if schedule.end is not None and layer > num(schedule.end, "last layer of the schedule"):
        return False
    if schedule.period is not None:
        period = num(schedule.period, "layer period")
        if period <= 0:
            return True
        if layer % period != num(schedule.offset, "layer offset") % period:
            return False
    if schedule.listed is not None and layer not in {
        int(i) for i in seq(schedule.listed, "list of layers")
    }:
        return False
    if schedule.unlisted is not None and layer in {
        int(i) for i in seq(schedule.unlisted, "list of excluded layers")
    }:
        return False
    if schedule.types is not None:
        types = seq(schedule.types, "per-layer types")
        if len(types) != n_layers:
            from mechmoe.core.errors import SpecMismatchError

            raise SpecMismatchError(
                f"the config's per-layer list ({', '.join(schedule.types)}) has {len(types)} "
                f"entries for {n_layers} layers; fix the adapter spec's schedule"
            )
        if str(types[layer]) not in schedule.type_is:
            return False
    return True


__all__ = [
    "AdapterSpec",
    "ConfigKeys",
    "DenseMLPSpec",
    "Factor",
    "GLUSpec",
    "GroupSpec",
    "LayerSchedule",
    "MoESpec",
    "NormSpec",
    "Number",
    "RouterField",
    "RouterSpec",
    "config_value",
    "schedule_has",
]
