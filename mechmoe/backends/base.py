"""The backend interface: what a backend must do, the registry that picks one by name,
and the capture pass every operation calls.

A backend runs *one* forward pass over a :class:`~mechmoe.core.types.Batch`, gathers the
quantities of the adapter spec at the batch's positions into a :class:`RawCapture`, and
applies edits at the named sites (:mod:`mechmoe.core.edits`) during that same pass.
Everything derived from weights (per-head vectors, neuron activations of the chosen
experts, a shared expert's activations) is computed here, once, for every backend.

Built-in backends: ``"nnsight"`` (:mod:`mechmoe.backends.nnsight`) and
``"transformerlens"`` (:mod:`mechmoe.backends.transformerlens`). Third parties register
theirs with :func:`register_backend` or through the entry-point group
``mechmoe.backends`` (``name = "package.module:BackendClass"``). docs/backends.md shows a
complete minimal backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from mechmoe.adapters.routing import route, selection_scores
from mechmoe.core.checks import entry_point
from mechmoe.core.edits import SITES, EditContext, Site, needs_of, sites_of
from mechmoe.core.errors import (
    InvalidInputError,
    InvalidTypeError,
    MechmoeError,
    NonFiniteError,
)
from mechmoe.core.interventions import as_edits
from mechmoe.core.registry import Lazy, Registry, deprecated_alias
from mechmoe.core.types import Batch, Capture, FFNWeights, LayerCapture, ModelView, RouterOutput

ENTRY_POINT_GROUP = "mechmoe.backends"


@dataclass(frozen=True)
class RawLayer:
    """What a backend gathered for one decoder layer at the batch's positions.

    Shapes are ``(batch, pos, …)``; ``router`` rows are ``batch·pos`` (the values the pass
    actually used, after any router edit, read with :func:`read_router`). ``z`` is the
    attention output projection's input (``head·head_dim`` wide; ``None`` on a layer
    without heads), ``attn_raw`` its output (the spec's ``other_mixer`` output on a layer
    without heads) and ``attn_out`` the value after the attention post-norm (``None``
    where the spec has none); ``resid_mid`` is the residual stream before the FFN's input
    norm, ``ffn_in`` the FFN's input, ``ffn_raw`` the FFN module's output (its first
    element where the module returns a tuple), ``ffn_out`` the value after its post-norm
    (or ``None``) and ``shared_raw`` the output of a shared expert that sits beside the
    FFN module (the spec's ``shared_in_ffn=False``; its down projection's output).
    Residual and logit scalars are applied by :func:`capture`, not by backends.
    """

    resid_pre: Float[Tensor, "batch pos d_model"]
    z: Float[Tensor, "batch pos hd"] | None
    attn_raw: Float[Tensor, "batch pos d_model"]
    attn_out: Float[Tensor, "batch pos d_model"] | None
    resid_mid: Float[Tensor, "batch pos d_model"]
    ffn_in: Float[Tensor, "batch pos d_model"]
    router: RouterOutput | None
    ffn_raw: Float[Tensor, "batch pos d_model"]
    ffn_out: Float[Tensor, "batch pos d_model"] | None
    shared_raw: Float[Tensor, "batch pos d_model"] | None = None


@dataclass(frozen=True)
class RawCapture:
    """A backend's record of one pass: one :class:`RawLayer` per layer, the final
    residual (the final norm's input) and the logits, at the batch's positions."""

    layers: tuple[RawLayer, ...]
    final_resid: Float[Tensor, "batch pos d_model"]
    logits: Float[Tensor, "batch pos vocab"]


class Backend(ABC):
    """What a backend must do: one pass over a batch, with edits at named sites.

    Subclasses set :attr:`name` and :attr:`sites` (the edit sites they can apply) and
    implement :meth:`run`. One instance serves one model; ``native`` is an object the
    backend can reuse instead of building its own (an nnsight envoy, a TransformerLens
    bridge the user already has).

    :meth:`run` must, for each layer in execution order: apply the edits of a site to
    its value (:func:`~mechmoe.core.edits.apply_edits`) before the model uses it; record
    the FFN input (``ctx.record_ffn_in``, ``batch·seq`` rows) when ``"ffn_in" in
    ctx.needs`` and the routing used (``ctx.record_routing``) when ``"routing" in
    ctx.needs``, both before the layer's ``experts_out``/``ffn_out`` sites run; and gather
    the :class:`RawLayer` values at ``batch.flat_positions()``.

    :attr:`sites` is read from the instance, so a backend may narrow it for one model in
    ``__init__`` (the TransformerLens backend drops ``experts_out`` where the bridge does
    not reach the routed experts); :func:`capture` refuses edits at any other site by
    name before the pass.
    """

    name: ClassVar[str] = ""
    #: The edit sites this backend can apply (class default; an instance may narrow it).
    sites: frozenset[Site] = frozenset(SITES)
    #: Whether ``load()`` first builds this backend on a weightless (meta-device) copy of
    #: the model, so a model it cannot run is refused by name before any weight is read.
    checks_before_weights: ClassVar[bool] = False
    #: False where a check on a weightless copy could not decide (the real load decides).
    decided: bool = True

    def __init__(self, model: ModelView, native: Any = None) -> None:
        self.model = model
        self.native = native

    @abstractmethod
    def run(self, batch: Batch, edits: Sequence[Any], ctx: EditContext) -> RawCapture:
        """One forward pass over ``batch`` with ``edits`` applied."""

    @classmethod
    def unwrap(cls, native: Any, *, tokenizer: Any = None) -> tuple[Any, Any, str]:
        """The HF model, tokenizer and default name inside ``native``, an object of the
        backend's library the user already built (:func:`mechmoe.wrap`).

        A backend that can reuse such objects overrides this (the TransformerLens backend
        unpacks a ``TransformerBridge``); ``tokenizer`` replaces the object's own.
        """
        raise InvalidInputError(
            f"the {cls.name!r} backend cannot wrap a {type(native).__name__}; load the model "
            "with mechmoe.load instead"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.name})"


# ---- registry --------------------------------------------------------------------------

BACKENDS: Registry[type[Backend]] = Registry(
    "backend",
    group=ENTRY_POINT_GROUP,
    check=lambda obj: isinstance(obj, type) and issubclass(obj, Backend),
    expected="a Backend subclass",
    builtins={
        "nnsight": Lazy(
            "mechmoe.backends.nnsight:NnsightBackend", "nnsight", "pip install nnsight"
        ),
        "transformerlens": Lazy(
            "mechmoe.backends.transformerlens:TransformerLensBackend",
            "transformer_lens",
            "pip install 'mechmoe[tl]' (TransformerLens 4.3)",
        ),
    },
    how_to_add="register one with mechmoe.register_backend or the 'mechmoe.backends' "
    "entry-point group (docs/backends.md)",
)


@entry_point
def register_backend(name: str, backend: type[Backend] | str, *, replace: bool = False) -> None:
    """Make ``backend`` (a :class:`Backend` subclass or a ``"module:Class"`` string)
    available as ``load(..., backend=name)``."""
    BACKENDS.register(name, backend, replace=replace)


def unregister_backend(name: str) -> None:
    """Forget a registered backend (a built-in it replaced comes back)."""
    BACKENDS.unregister(name)


def list_backends() -> list[str]:
    """Names of every known backend (whether or not its library is installed)."""
    return BACKENDS.names()


@entry_point
def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``; a missing library is named with the
    command that installs it."""
    return BACKENDS.get(name)


def backend_for_native(native: Any) -> str:
    """The built-in backend that wraps ``native`` (an object of its library), by the
    library the object's class comes from; :func:`mechmoe.wrap` uses it when no backend is
    named."""
    library = type(native).__module__.partition(".")[0]
    for name, lazy in BACKENDS.builtin_entries():
        if lazy.requires == library:
            return name
    raise InvalidTypeError(
        f"wrap() takes an object a backend runs on (of the built-in backends: a TransformerLens "
        f"TransformerBridge), got a {type(native).__name__}; wrap an HF model with "
        "mechmoe.load(model, tokenizer=...), or pass backend= naming a backend that unwraps it"
    )


available_backends = deprecated_alias(list_backends, "available_backends")


# ---- the capture pass ------------------------------------------------------------------


@torch.no_grad()
def capture(model: Any, batch: Batch, *, interventions: Any = None) -> Capture:
    """One forward pass of ``model``'s backend over ``batch`` with ``interventions`` applied.

    Edits are validated against the model and checked against the backend's sites before
    the pass; the backend records only what the edits need.
    """
    backend: Backend = model.backend_impl
    edits = as_edits(interventions)
    for e in edits:
        e.validate(model)
    required = sites_of(edits)
    if not model.dims.is_moe:  # a dense model has no router sites to reach
        required -= {"router", "experts_out"}
    missing = sorted(required - backend.sites)
    if missing:
        raise InvalidInputError(
            f"the {backend.name!r} backend cannot edit at site {missing[0]!r} "
            f"(it supports {', '.join(sorted(backend.sites)) or 'no edits'}); "
            "load the model with another backend"
        )
    ctx = EditContext(model=model, batch=batch, needs=needs_of(edits))
    raw = backend.run(batch, edits, ctx)
    if not edits:  # an intervention may overflow on purpose; its callers report ties
        _check_finite(model, batch, raw)
    layers = tuple(_finish_layer(model, li, rl, batch.size) for li, rl in enumerate(raw.layers))
    return Capture(
        batch=batch,
        layers=layers,
        final_resid=raw.final_resid,
        logits=model.scale_logits(raw.logits),
        meta={
            "model": model.name,
            "revision": model.revision or "",
            "adapter": model.spec.name,
            "backend": backend.name,
            "interventions": repr(edits) if edits else "",
        },
    )


def _check_finite(model: Any, batch: Batch, raw: RawCapture) -> None:
    """Refuse a pass whose logits are NaN or infinite at a requested position, naming the
    first layer (and sub-layer) where the activations stop being finite.

    One sum over the logits decides the usual case (all finite); only a non-finite sum
    looks closer.
    """
    if bool(torch.isfinite(raw.logits.sum())):
        return
    valid = batch.valid

    def bad(x: Tensor | None) -> bool:
        return x is not None and not bool(torch.isfinite(x[valid]).all())

    if not bad(raw.logits):
        return  # only padding, or a finite sum that overflowed
    where = "the final norm or the unembedding"
    for li, rl in enumerate(raw.layers):
        if bad(rl.resid_pre):
            where = f"the input of layer {li}"
        elif bad(rl.attn_raw) or bad(rl.attn_out):
            where = f"layer {li} (attention)"
        elif bad(rl.ffn_raw) or bad(rl.ffn_out):
            where = f"layer {li} (FFN)"
        else:
            continue
        break
    dtype = getattr(model, "dtype", None)
    low = dtype is not None and dtype in (torch.float16, torch.bfloat16)
    advice = (
        f"the weights are finite, so {str(dtype).removeprefix('torch.')} overflows there: "
        "load the model in float32 (--dtype float32)"
        if low
        else "the weights are finite, so the model itself overflows there: check the checkpoint"
    )
    raise NonFiniteError(
        f"the forward pass of {model.name!r} gives NaN or infinite values from {where} on; {advice}",
        where=where,
    )


def _finish_layer(model: ModelView, li: int, raw: RawLayer, B: int) -> LayerCapture:
    """Derive per-head vectors, routing scores and neuron activations from the gathered values."""
    m: Any = model  # the handle's routing and residual helpers
    dims = model.dims
    H, D = dims.n_heads, dims.head_dim
    P = raw.resid_pre.shape[1]
    if dims.has_heads(li) and raw.z is not None:
        head_z = raw.z.reshape(B, P, H, D)
        w_o = model.W_O(li).reshape(-1, H, D)
        heads = torch.einsum("bphk,dhk->bphd", head_z.to(w_o.dtype), w_o)
        mixer = "attention"
    else:  # a token mixer without heads: zero heads, its whole output is A[l]
        head_z = raw.resid_pre.new_zeros((B, P, 0, D))
        heads = raw.resid_pre.new_zeros((B, P, 0, raw.resid_pre.shape[-1]))
        mixer = "recurrent"
    x = raw.ffn_in
    weights = model.ffn_weights(li)
    kind = model.layer_kind(li)
    shared_acts = shared_gate = None
    router_logits = selection = mixing = None
    if kind == "moe":
        if raw.router is None:
            raise MechmoeError(f"the backend returned no routing for MoE layer {li}")
        idx = raw.router.index.reshape(B, P, -1)
        mixing = raw.router.weights.reshape(B, P, -1)
        router_logits = raw.router.logits.reshape(B, P, -1)
        rule = m.routing_rule(li)
        selection = selection_scores(raw.router.logits, rule, bias=m.selection_bias(li)).reshape(
            B, P, -1
        )
        if weights.gate_on == "input":  # the weight scaled the expert's input: acts hold it
            acts = _chosen_activations(weights, x, idx, mixing)
            gate = torch.ones_like(mixing)
        else:
            acts = _chosen_activations(weights, x, idx)
            gate = mixing
        shared = model.shared_weights(li)
        if shared is not None:
            sw, g = shared
            shared_acts = sw.activations(x.reshape(B * P, -1), 0).reshape(B, P, -1)
            if g is not None:
                shared_gate = torch.sigmoid(x @ g.T).reshape(B, P)
    else:
        idx = torch.zeros((B, P, 1), dtype=torch.long, device=x.device)
        gate = torch.ones((B, P, 1), dtype=x.dtype, device=x.device)
        acts = weights.activations(x.reshape(B * P, -1), 0).reshape(B, P, 1, -1)
    ffn_raw = raw.ffn_raw if raw.shared_raw is None else raw.ffn_raw + raw.shared_raw
    attn_out = raw.attn_out if raw.attn_out is not None else raw.attn_raw
    ffn_out = raw.ffn_out if raw.ffn_out is not None else ffn_raw
    return LayerCapture(
        resid_pre=raw.resid_pre,
        head_z=head_z,
        heads=heads,
        attn_raw=raw.attn_raw,
        attn_out=m.scale_residual(attn_out),
        resid_mid=raw.resid_mid,
        ffn_in=x,
        router_logits=router_logits,
        expert_idx=idx,
        expert_gate=gate,
        acts=acts,
        shared_acts=shared_acts,
        shared_gate=shared_gate,
        ffn_raw=ffn_raw,
        ffn_out=m.scale_residual(ffn_out),
        kind=kind,
        selection_scores=selection,
        expert_weight=mixing,
        mixer=mixer,
    )


def _chosen_activations(
    weights: FFNWeights, x: Tensor, idx: Tensor, scale: Tensor | None = None
) -> Tensor:
    """Activations of each chosen expert on the input it received (``x``, or ``scale · x``
    where the routing weight applies to the expert's input), grouped by expert so each
    weight is read once."""
    B, P, K = idx.shape
    flat_x = x.reshape(B * P, -1)
    flat_idx = idx.reshape(B * P, K)
    flat_scale = None if scale is None else scale.reshape(B * P, K)
    out = torch.zeros((B * P, K, weights.w_up.shape[1]), dtype=x.dtype, device=x.device)
    for e in torch.unique(flat_idx).tolist():
        rows, slots = torch.nonzero(flat_idx == e, as_tuple=True)
        inp = flat_x[rows]
        if flat_scale is not None:
            inp = inp * flat_scale[rows, slots, None].to(inp.dtype)
        out[rows, slots] = weights.activations(inp, e).to(out.dtype)
    return out.reshape(B, P, K, -1)


# ---- routers: the family's output format <-> RouterOutput -------------------------------


def read_router(model: Any, layer: int, output: Any) -> RouterOutput:
    """A router module's output as :class:`RouterOutput` (logits, weights, index).

    The spec's ``routing.returns`` says what the module returns, in order. A router that
    returns a table of every expert's weight (Llama-4) is read at the experts its rule
    chooses from the logits, which are the ones the table holds.
    """
    moe = model.spec.moe
    fields = dict(zip(moe.routing.returns, output, strict=True))
    logits = fields["logits"]
    if "index" in fields:
        return RouterOutput(logits, fields["weights"], fields["index"])
    rule = model.routing_rule(layer)
    _, index = route(logits, rule, k=model.dims.top_k[layer])
    return RouterOutput(logits, fields["table"].gather(-1, index), index)


def write_router(model: Any, layer: int, output: Any, routing: RouterOutput) -> tuple[Any, ...]:
    """``output`` (a router module's own) with ``routing`` put in, in the module's format."""
    moe = model.spec.moe
    parts = []
    for name, value in zip(moe.routing.returns, output, strict=True):
        if name == "table":
            table = torch.zeros_like(value)
            table.scatter_(-1, routing.index.long(), routing.weights.to(value.dtype))
            parts.append(table)
        elif name == "index":
            parts.append(routing.index.to(value.dtype))
        else:
            parts.append({"logits": routing.logits, "weights": routing.weights}[name])
    return tuple(parts)


def first(value: Any) -> Any:
    """A module's hidden-state output: the first element where it returns a tuple
    (GPT-OSS's MLP returns ``(hidden, router_scores)``, Llama-4's ``(hidden, logits)``)."""
    return value[0] if isinstance(value, tuple) else value


__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "RawCapture",
    "RawLayer",
    "BACKENDS",
    "available_backends",
    "backend_for_native",
    "capture",
    "first",
    "read_router",
    "write_router",
    "get_backend",
    "list_backends",
    "register_backend",
    "unregister_backend",
]
