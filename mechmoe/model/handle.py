"""The model handle: an HF model, its tokenizer, its adapter spec and its backend.

A :class:`Model` resolves every path of the spec up front (so a wrong spec fails when the
model is wrapped, naming the path), exposes the weights operations need as views in one
canonical layout (:mod:`mechmoe.core.types`), and runs the capture pass through its
backend (:mod:`mechmoe.backends`). :mod:`mechmoe.model.loading` builds handles.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mechmoe._types import DEFAULT_BACKEND, LayerKind
from mechmoe.adapters.registry import get_adapter
from mechmoe.adapters.routing import reroute, routing_rule
from mechmoe.adapters.spec import AdapterSpec, DenseMLPSpec, config_value
from mechmoe.backends.base import Backend, capture, get_backend
from mechmoe.backends.tokenize import make_batch
from mechmoe.core.errors import SpecMismatchError
from mechmoe.core.interventions import RoutingRequest
from mechmoe.core.types import Batch, Capture, FFNWeights, ModelDims, NormParams, RouterOutput
from mechmoe.model.options import LoadOptions


def _resolve(root: nn.Module, path: str, *, where: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential, list, tuple)):
            idx = int(part)
            if idx >= len(obj):
                obj = None
            else:
                obj = obj[idx]
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            raise SpecMismatchError(
                f"adapter path {path!r} does not resolve on {where} (no {part!r}); "
                "the model's layout differs from the adapter spec: fix the spec or pick another adapter"
            )
    return obj


def _linear_weight(module: Any, layout: str) -> Tensor:
    """Weight as ``(out, in)`` whatever the storage layout."""
    w = module.weight
    return w.T if layout == "conv1d" else w


class Model:
    """An HF causal LM with its adapter spec, tokenizer and capture backend.

    Build it with :func:`load` or :meth:`Model.from_hf`.

    Examples
    --------
    >>> from mechmoe.testing import tiny_model
    >>> model = tiny_model("mixtral")
    >>> cap = model.capture(["The capital of France is"])
    >>> tuple(cap.logits.shape) == (1, 1, model.dims.vocab)
    True
    """

    #: The options :func:`~mechmoe.model.load` loaded the model with (``None`` for a
    #: handle built otherwise); recorded in results' provenance.
    load_options: LoadOptions | None = None

    def __init__(
        self,
        hf: nn.Module,
        tokenizer: Any,
        spec: AdapterSpec,
        *,
        name: str,
        revision: str | None = None,
        backend: str = DEFAULT_BACKEND,
        native: Any = None,
    ) -> None:
        # resolved now, so an unknown or uninstalled backend fails before any work
        self._backend_cls: type[Backend] = get_backend(backend)
        self._native = native
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.name = name
        self.revision = revision
        self.backend = backend
        self._layers = list(_resolve(hf, spec.layers, where=type(hf).__name__))
        self._check_paths()
        self.dims = self._read_dims()

    @classmethod
    def from_hf(
        cls,
        hf: nn.Module,
        tokenizer: Any,
        *,
        name: str | None = None,
        spec: AdapterSpec | None = None,
        revision: str | None = None,
        backend: str = DEFAULT_BACKEND,
        native: Any = None,
    ) -> Model:
        """Wrap an HF model and tokenizer the caller already built."""
        if spec is None:
            spec = get_adapter(architecture_of(hf))
        name = name or getattr(hf.config, "_name_or_path", "") or type(hf).__name__
        return cls(
            hf, tokenizer, spec, name=name, revision=revision, backend=backend, native=native
        )

    # ---- structure -----------------------------------------------------------------
    def _layer_paths(self, kind: LayerKind) -> list[str]:
        s = self.spec
        paths = [s.attn_out_proj, s.ffn]
        paths += [p for p in (s.attn_out_norm, s.ffn_in_norm, s.ffn_out_norm) if p]
        if kind == "moe":
            assert s.moe is not None
            paths += [s.moe.router, s.moe.experts]
            paths += [f"{s.moe.experts}.{a}" for a in (s.moe.gate_up, s.moe.down, s.moe.act)]
            if s.moe.shared is not None:
                paths += _dense_paths(s.moe.shared)
            if s.moe.shared_gate:
                paths.append(s.moe.shared_gate)
        else:
            assert s.dense is not None
            paths += _dense_paths(s.dense)
        return paths

    def layer_kind(self, layer: int) -> LayerKind:
        moe = self.spec.moe
        if moe is not None:
            try:
                _resolve(self._layers[layer], moe.router, where="layer")
                return "moe"
            except SpecMismatchError:
                if self.spec.dense is None:
                    raise
        return "dense"

    def _check_paths(self) -> None:
        where = type(self.hf).__name__
        for path in (self.spec.final_norm, self.spec.unembed):
            _resolve(self.hf, path, where=where)
        for i, layer in enumerate(self._layers):
            for path in self._layer_paths(self.layer_kind(i)):
                _resolve(layer, path, where=f"{where} layer {i} ({self.spec.layers}.{i})")

    def _read_dims(self) -> ModelDims:
        cfg, s = self.hf.config, self.spec
        d_model = int(config_value(cfg, s.d_model, what="model width"))
        n_heads = int(config_value(cfg, s.n_heads, what="attention head count"))
        try:
            head_dim = int(config_value(cfg, s.head_dim, what="head size"))
        except SpecMismatchError:
            head_dim = d_model // n_heads
        kinds: list[LayerKind] = []
        n_exp, top_k, d_ffn, d_shared = [], [], [], []
        for i in range(len(self._layers)):
            kind = self.layer_kind(i)
            kinds.append(kind)
            w = self.ffn_weights(i)
            n_exp.append(int(w.w_up.shape[0]))
            d_ffn.append(int(w.w_up.shape[1]))
            if kind == "moe":
                assert s.moe is not None
                top_k.append(int(config_value(cfg, s.moe.top_k, what="experts per token (top-k)")))
                sh = self.shared_weights(i)
                d_shared.append(None if sh is None else int(sh[0].w_up.shape[1]))
            else:
                top_k.append(1)
                d_shared.append(None)
        o_in = _linear_weight(self.attn_out_proj(0), s.attn_out_layout).shape[1]
        if o_in != n_heads * head_dim:
            raise SpecMismatchError(
                f"{s.attn_out_proj} takes {o_in} inputs but the config gives {n_heads} heads × "
                f"{head_dim}; fix the adapter's head keys"
            )
        max_pos = None
        for key in ("max_position_embeddings", "n_positions"):
            if getattr(cfg, key, None):
                max_pos = int(getattr(cfg, key))
                break
        return ModelDims(
            n_layers=len(self._layers),
            d_model=d_model,
            n_heads=n_heads,
            head_dim=head_dim,
            vocab=int(self.W_U.shape[0]),
            max_positions=max_pos,
            layer_kinds=tuple(kinds),
            n_experts=tuple(n_exp),
            top_k=tuple(top_k),
            d_ffn=tuple(d_ffn),
            d_shared=tuple(d_shared),
        )

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def layer(self, i: int) -> nn.Module:
        return self._layers[i]

    def module(self, layer: int, path: str) -> Any:
        """The object at ``path`` relative to decoder layer ``layer``."""
        return _resolve(self._layers[layer], path, where=f"layer {layer}")

    def attn_out_proj(self, layer: int) -> nn.Module:
        return self.module(layer, self.spec.attn_out_proj)

    @cached_property
    def backend_impl(self) -> Backend:
        """The backend instance that runs this model's passes (built on first use)."""
        return self._backend_cls(self, self._native)

    # ---- weights --------------------------------------------------------------------
    @property
    def W_U(self) -> Float[Tensor, "vocab d_model"]:
        return _resolve(self.hf, self.spec.unembed, where="model").weight

    @property
    def b_U(self) -> Float[Tensor, " vocab"] | None:
        return getattr(_resolve(self.hf, self.spec.unembed, where="model"), "bias", None)

    def _norm(self, module: Any) -> NormParams:
        ns = self.spec.norm
        eps = (
            ns.eps
            if isinstance(ns.eps, float)
            else float(config_value(self.hf.config, ns.eps, what="norm eps"))
        )
        weight = getattr(module, "weight", None) if ns.weight else None
        bias = getattr(module, "bias", None) if ns.bias else None
        if ns.weight and weight is None:
            raise SpecMismatchError(
                f"the spec says the norm {type(module).__name__} has a weight, but it has none"
            )
        return NormParams(kind=ns.kind, weight=weight, bias=bias, eps=eps)

    @property
    def final_norm(self) -> NormParams:
        return self._norm(_resolve(self.hf, self.spec.final_norm, where="model"))

    def attn_out_norm(self, layer: int) -> NormParams | None:
        p = self.spec.attn_out_norm
        return None if p is None else self._norm(self.module(layer, p))

    def ffn_out_norm(self, layer: int) -> NormParams | None:
        p = self.spec.ffn_out_norm
        return None if p is None else self._norm(self.module(layer, p))

    def W_O(self, layer: int) -> Float[Tensor, "d_model head_x_dim"]:
        """The attention output projection as ``(d_model, n_heads·head_dim)``."""
        return _linear_weight(self.attn_out_proj(layer), self.spec.attn_out_layout)

    def b_O(self, layer: int) -> Float[Tensor, " d_model"] | None:
        return getattr(self.attn_out_proj(layer), "bias", None)

    def ffn_weights(self, layer: int) -> FFNWeights:
        """The layer's routed experts (MoE) or its MLP as a single expert (dense)."""
        s = self.spec
        if self.layer_kind(layer) == "moe":
            assert s.moe is not None
            experts = self.module(layer, s.moe.experts)
            gate_up = getattr(experts, s.moe.gate_up)
            down = getattr(experts, s.moe.down)
            inner = gate_up.shape[1] // 2
            return FFNWeights(
                w_gate=gate_up[:, :inner],
                w_up=gate_up[:, inner:],
                w_down=down,
                b_up=None,
                b_down=None,
                act=getattr(experts, s.moe.act),
            )
        assert s.dense is not None
        return self._dense_weights(layer, s.dense)

    def _dense_weights(self, layer: int, d: DenseMLPSpec) -> FFNWeights:
        up = self.module(layer, d.up)
        down = self.module(layer, d.down)
        gate = self.module(layer, d.gate) if d.gate else None
        b_up = getattr(up, "bias", None)
        return FFNWeights(
            w_gate=None if gate is None else _linear_weight(gate, d.layout)[None],
            w_up=_linear_weight(up, d.layout)[None],
            w_down=_linear_weight(down, d.layout)[None],
            b_up=None if b_up is None else b_up[None],
            b_down=getattr(down, "bias", None),
            act=self.module(layer, d.act),
        )

    def shared_weights(
        self, layer: int
    ) -> tuple[FFNWeights, Float[Tensor, "one d_model"] | None] | None:
        """A shared expert's weights and its gate's weight (``None`` if the layer has none)."""
        moe = self.spec.moe
        if moe is None or moe.shared is None or self.layer_kind(layer) != "moe":
            return None
        gate = self.module(layer, moe.shared_gate).weight if moe.shared_gate else None
        return self._dense_weights(layer, moe.shared), gate

    def renormalizes(self) -> bool:
        """Whether top-k routing weights are renormalised to sum to one."""
        return routing_rule(self.spec, self.hf.config).renormalize

    def reroute(self, layer: int, router: RouterOutput, request: RoutingRequest) -> RouterOutput:
        """Layer ``layer``'s routing under a merged routing request, by this model's rule
        (:func:`mechmoe.adapters.routing.reroute`, parameters from the adapter spec)."""
        return reroute(router, request, routing_rule(self.spec, self.hf.config), layer=layer)

    # ---- running ----------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str], *, positions: Any = "last") -> Batch:
        return make_batch(self, prompts, positions=positions)

    def capture(
        self,
        prompts: Sequence[str] | Batch,
        *,
        positions: Any = "last",
        interventions: Any = None,
    ) -> Capture:
        """Run one forward pass and capture every layer at ``positions``.

        ``positions`` is ``"last"`` (each prompt's last token, the default), ``"all"``
        (every token; padding marked invalid) or a list of token indices into each
        prompt's own tokens (negative counts from the end), the same for every prompt.
        ``interventions`` (an intervention, a plan, an edit, or a list of them; anything
        else is an :class:`~mechmoe.core.errors.InvalidTypeError`) are applied inside the same
        pass.
        """
        batch = (
            prompts if isinstance(prompts, Batch) else self.tokenize(prompts, positions=positions)
        )
        return capture(self, batch, interventions=interventions)

    @torch.no_grad()
    def hf_logits(self, batch: Batch) -> Float[Tensor, "batch seq vocab"]:
        """A plain HF forward (no tracing) on a tokenized batch."""
        out = self.hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
        return out.logits

    def __repr__(self) -> str:
        d = self.dims
        moe = f", experts={max(d.n_experts)}, top_k={max(d.top_k)}" if d.is_moe else ""
        rev = f"@{self.revision}" if self.revision else ""
        be = f", backend={self.backend}" if self.backend != DEFAULT_BACKEND else ""
        return (
            f"Model({self.name}{rev}, adapter={self.spec.name}, layers={d.n_layers}, "
            f"d_model={d.d_model}, heads={d.n_heads}{moe}{be})"
        )


def _dense_paths(d: DenseMLPSpec) -> list[str]:
    return [p for p in (d.gate, d.up, d.down, d.act) if p]


def architecture_of(hf: nn.Module) -> str:
    archs = getattr(hf.config, "architectures", None) or []
    return archs[0] if archs else type(hf).__name__


__all__ = ["Model", "architecture_of"]
