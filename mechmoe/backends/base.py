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

from mechmoe.core.checks import entry_point
from mechmoe.core.edits import SITES, EditContext, Site, needs_of, sites_of
from mechmoe.core.errors import InvalidInputError, InvalidTypeError, MechmoeError
from mechmoe.core.interventions import as_edits
from mechmoe.core.registry import Lazy, Registry, deprecated_alias
from mechmoe.core.types import Batch, Capture, FFNWeights, LayerCapture, ModelView, RouterOutput

ENTRY_POINT_GROUP = "mechmoe.backends"


@dataclass(frozen=True)
class RawLayer:
    """What a backend gathered for one decoder layer at the batch's positions.

    Shapes are ``(batch, pos, …)``; ``router`` rows are ``batch·pos`` (the values the pass
    actually used, after any router edit). ``z`` is the attention output projection's
    input (``head·head_dim`` wide), ``attn_raw`` its output and ``attn_out`` the value
    after the attention post-norm (``None`` where the spec has none); ``resid_mid`` is the
    residual stream before the FFN's input norm, ``ffn_in`` the FFN's input, ``ffn_raw``
    the FFN module's output and ``ffn_out`` the value after its post-norm (or ``None``).
    """

    resid_pre: Float[Tensor, "batch pos d_model"]
    z: Float[Tensor, "batch pos hd"]
    attn_raw: Float[Tensor, "batch pos d_model"]
    attn_out: Float[Tensor, "batch pos d_model"] | None
    resid_mid: Float[Tensor, "batch pos d_model"]
    ffn_in: Float[Tensor, "batch pos d_model"]
    router: RouterOutput | None
    ffn_raw: Float[Tensor, "batch pos d_model"]
    ffn_out: Float[Tensor, "batch pos d_model"] | None


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
    layers = tuple(_finish_layer(model, li, rl, batch.size) for li, rl in enumerate(raw.layers))
    return Capture(
        batch=batch,
        layers=layers,
        final_resid=raw.final_resid,
        logits=raw.logits,
        meta={
            "model": model.name,
            "revision": model.revision or "",
            "adapter": model.spec.name,
            "backend": backend.name,
            "interventions": repr(edits) if edits else "",
        },
    )


def _finish_layer(model: ModelView, li: int, raw: RawLayer, B: int) -> LayerCapture:
    """Derive per-head vectors and neuron activations from the gathered values."""
    dims = model.dims
    H, D = dims.n_heads, dims.head_dim
    P = raw.z.shape[1]
    head_z = raw.z.reshape(B, P, H, D)
    w_o = model.W_O(li).reshape(-1, H, D)
    heads = torch.einsum("bphk,dhk->bphd", head_z.to(w_o.dtype), w_o)
    x = raw.ffn_in
    weights = model.ffn_weights(li)
    kind = model.layer_kind(li)
    shared_acts = shared_gate = None
    if kind == "moe":
        if raw.router is None:
            raise MechmoeError(f"the backend returned no routing for MoE layer {li}")
        idx = raw.router.index.reshape(B, P, -1)
        gate = raw.router.weights.reshape(B, P, -1)
        router_logits = raw.router.logits.reshape(B, P, -1)
        acts = _chosen_activations(weights, x, idx)
        shared = model.shared_weights(li)
        if shared is not None:
            sw, g = shared
            shared_acts = sw.activations(x.reshape(B * P, -1), 0).reshape(B, P, -1)
            if g is not None:
                shared_gate = torch.sigmoid(x @ g.T).reshape(B, P)
    else:
        idx = torch.zeros((B, P, 1), dtype=torch.long, device=x.device)
        gate = torch.ones((B, P, 1), dtype=x.dtype, device=x.device)
        router_logits = None
        acts = weights.activations(x.reshape(B * P, -1), 0).reshape(B, P, 1, -1)
    return LayerCapture(
        resid_pre=raw.resid_pre,
        head_z=head_z,
        heads=heads,
        attn_raw=raw.attn_raw,
        attn_out=raw.attn_out if raw.attn_out is not None else raw.attn_raw,
        resid_mid=raw.resid_mid,
        ffn_in=x,
        router_logits=router_logits,
        expert_idx=idx,
        expert_gate=gate,
        acts=acts,
        shared_acts=shared_acts,
        shared_gate=shared_gate,
        ffn_raw=raw.ffn_raw,
        ffn_out=raw.ffn_out if raw.ffn_out is not None else raw.ffn_raw,
        kind=kind,
    )


def _chosen_activations(weights: FFNWeights, x: Tensor, idx: Tensor) -> Tensor:
    """Activations of each chosen expert, grouped by expert so each weight is read once."""
    B, P, K = idx.shape
    flat_x = x.reshape(B * P, -1)
    flat_idx = idx.reshape(B * P, K)
    out = torch.zeros((B * P, K, weights.w_up.shape[1]), dtype=x.dtype, device=x.device)
    for e in torch.unique(flat_idx).tolist():
        rows, slots = torch.nonzero(flat_idx == e, as_tuple=True)
        out[rows, slots] = weights.activations(flat_x[rows], e).to(out.dtype)
    return out.reshape(B, P, K, -1)


__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "RawCapture",
    "RawLayer",
    "BACKENDS",
    "available_backends",
    "backend_for_native",
    "capture",
    "get_backend",
    "list_backends",
    "register_backend",
    "unregister_backend",
]
