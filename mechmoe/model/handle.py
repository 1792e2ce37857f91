"""The model handle: an HF model, its tokenizer, its adapter spec and its backend.

A :class:`Model` resolves every path of the spec up front (so a wrong spec fails when the
model is wrapped, naming the path), exposes the weights operations need as views in one
canonical layout (:mod:`mechmoe.core.types`), and runs the capture pass through its
backend (:mod:`mechmoe.backends`). :mod:`mechmoe.model.loading` builds handles.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mechmoe._types import DEFAULT_BACKEND, LayerKind, MixerKind
from mechmoe.adapters.registry import get_adapter
from mechmoe.adapters.routing import RoutingRule, reroute, routing_rule
from mechmoe.adapters.spec import (
    AdapterSpec,
    DenseMLPSpec,
    Factor,
    MoESpec,
    config_value,
    schedule_has,
)
from mechmoe.backends.base import Backend, capture, get_backend
from mechmoe.backends.tokenize import make_batch
from mechmoe.core.errors import InvalidInputError, SpecMismatchError
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
    #: The tensors transformers could not load as the config asked (``missing``,
    #: ``unexpected``, ``mismatched``), when ``allow_missing_weights`` let such a model
    #: load; ``None`` otherwise. Recorded in results' provenance.
    weights_report: dict[str, list[str]] | None = None

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
        n = len(self._layers)
        self._kinds: list[LayerKind] = [self._find_layer_kind(i, n) for i in range(n)]
        self._mixers: list[MixerKind] = [self._find_mixer_kind(i, n) for i in range(n)]
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

    @classmethod
    def check_backend(cls, config: Any, spec: AdapterSpec, *, name: str, backend: str) -> bool:
        """Refuse, before any weight is read, a model that ``backend`` cannot run.

        A backend that asks for it (``checks_before_weights``, e.g. TransformerLens, whose
        bridges hook some families' routers and not others) is built on a weightless
        (meta-device) copy of the model made from ``config``; whatever it cannot reach is
        reported by name. Other backends cost nothing here. Returns whether the check
        decided: ``False`` where the backend cannot be built without real weights (a
        TransformerLens bridge that splits GPT-2's fused QKV, or builds Mamba-2 layers, at
        boot), so loading the weights decides.
        """
        backend_cls = get_backend(backend)
        if not getattr(backend_cls, "checks_before_weights", False):
            return True
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            hf = AutoModelForCausalLM.from_config(copy.deepcopy(config))
        return bool(cls(hf, None, spec, name=name, backend=backend).backend_impl.decided)

    # ---- structure -----------------------------------------------------------------
    def _layer_paths(self, layer: int) -> list[str]:
        s = self.spec
        paths = [s.attn_out_proj if self._mixers[layer] == "attention" else str(s.other_mixer)]
        paths.append(s.ffn)
        paths += [p for p in (s.attn_out_norm, s.ffn_in_norm, s.ffn_out_norm) if p]
        if self._kinds[layer] == "moe":
            moe = s.moe
            assert moe is not None
            r = moe.routing
            paths += [moe.router, moe.experts]
            owner = moe.router if r.params_on == "router" else s.ffn
            paths += [f"{owner}.{a}" for a in (r.selection_bias, r.expert_scale) if a]
            attrs = (moe.gate_up, moe.down, moe.act, moe.gate_up_bias, moe.down_bias)
            paths += [f"{moe.experts}.{a}" for a in attrs if a]
            if moe.shared is not None:
                paths += moe.shared.paths()
            if moe.shared_gate:
                paths.append(moe.shared_gate)
        else:
            assert s.dense is not None
            paths += s.dense.paths()
        return paths

    def _find_layer_kind(self, layer: int, n_layers: int) -> LayerKind:
        s, moe = self.spec, self.spec.moe
        if moe is None:
            return "dense"
        if moe.layers is not None:
            if schedule_has(moe.layers, self.hf.config, layer, n_layers):
                return "moe"
            if s.dense is None:
                raise SpecMismatchError(
                    f"the adapter's MoE schedule makes layer {layer} dense, but the spec "
                    "describes no dense MLP (dense=DenseMLPSpec(...)); fix the spec"
                )
            return "dense"
        try:
            _resolve(self._layers[layer], moe.router, where="layer")
            return "moe"
        except SpecMismatchError:
            if s.dense is None:
                raise
        return "dense"

    def _find_mixer_kind(self, layer: int, n_layers: int) -> MixerKind:
        s = self.spec
        if s.other_mixer is None:
            return "attention"
        if s.attention_layers is not None:
            has = schedule_has(s.attention_layers, self.hf.config, layer, n_layers)
            return "attention" if has else "recurrent"
        try:
            _resolve(self._layers[layer], s.attn_out_proj, where="layer")
            return "attention"
        except SpecMismatchError:
            return "recurrent"

    def layer_kind(self, layer: int) -> LayerKind:
        """``"moe"`` or ``"dense"`` (a dense layer of a MoE model is labelled dense)."""
        return self._kinds[layer]

    def mixer_kind(self, layer: int) -> MixerKind:
        """``"attention"`` (the layer has heads) or ``"recurrent"`` (Mamba, linear
        attention: a token mixer without heads, whose output is ``A[l]``)."""
        return self._mixers[layer]

    def _check_paths(self) -> None:
        where = type(self.hf).__name__
        self._check_schedule()
        for path in (self.spec.final_norm, self.spec.unembed):
            _resolve(self.hf, path, where=where)
        for i, layer in enumerate(self._layers):
            for path in self._layer_paths(i):
                _resolve(layer, path, where=f"{where} layer {i} ({self.spec.layers}.{i})")

    def _check_schedule(self) -> None:
        moe = self.spec.moe
        if moe is not None and moe.layers is not None:
            # the schedule says dense: the layer must not hold a router (TransformerLens
            # #1645 showed tensors of the wrong kind under neuron names on such layers)
            for i, layer in enumerate(self._layers):
                if self._kinds[i] == "dense":
                    try:
                        _resolve(layer, moe.router, where="layer")
                    except SpecMismatchError:
                        continue
                    raise SpecMismatchError(
                        f"the adapter's MoE schedule makes layer {i} dense, but it holds a "
                        f"router ({moe.router}); fix the spec's MoE layer schedule"
                    )

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
                top_k.append(self._top_k(s.moe, i))
                sh = self.shared_weights(i)
                d_shared.append(None if sh is None else int(sh[0].w_up.shape[1]))
            else:
                top_k.append(1)
                d_shared.append(None)
        attention = [i for i, m in enumerate(self._mixers) if m == "attention"]
        if attention:
            o_in = _linear_weight(self.attn_out_proj(attention[0]), s.attn_out_layout).shape[1]
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
            mixer_kinds=tuple(self._mixers),
        )

    def _top_k(self, moe: MoESpec, layer: int) -> int:
        value = config_value(self.hf.config, moe.top_k, what="experts per token (top-k)")
        if isinstance(value, (list, tuple)):  # a per-layer k (HunYuan's moe_topk)
            if layer >= len(value):
                raise SpecMismatchError(
                    f"the config's per-layer top-k ({', '.join(moe.top_k)}) has no entry for "
                    f"layer {layer}"
                )
            value = value[layer]
        return int(value)

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
        if self._mixers[layer] != "attention":
            raise InvalidInputError(
                f"layer {layer} has no attention heads: its token mixer is "
                f"{self.spec.other_mixer!r} (a {type(self.module(layer, str(self.spec.other_mixer))).__name__})"
            )
        return _linear_weight(self.attn_out_proj(layer), self.spec.attn_out_layout)

    def b_O(self, layer: int) -> Float[Tensor, " d_model"] | None:
        if self._mixers[layer] != "attention":
            return None
        return getattr(self.attn_out_proj(layer), "bias", None)

    def ffn_weights(self, layer: int) -> FFNWeights:
        """The layer's routed experts (MoE) or its MLP as a single expert (dense)."""
        s = self.spec
        if self.layer_kind(layer) == "moe":
            assert s.moe is not None
            return self._expert_weights(layer, s.moe)
        assert s.dense is not None
        return self._dense_weights(layer, s.dense)

    def _expert_weights(self, layer: int, moe: MoESpec) -> FFNWeights:
        experts = self.module(layer, moe.experts)
        stored = getattr(experts, moe.gate_up)
        down = getattr(experts, moe.down)
        transposed = moe.layout == "transposed"
        # canonical views: gate_up (E, 2I, d), down (E, d, I)
        gate_up = stored.transpose(1, 2) if transposed else stored
        w_down = down.transpose(1, 2) if transposed else down
        bias = getattr(experts, moe.gate_up_bias) if moe.gate_up_bias else None
        if moe.split == "interleaved":
            w_gate, w_up = gate_up[:, 0::2], gate_up[:, 1::2]
            b_gate, b_up = (None, None) if bias is None else (bias[:, 0::2], bias[:, 1::2])
        else:
            inner = gate_up.shape[1] // 2
            w_gate, w_up = gate_up[:, :inner], gate_up[:, inner:]
            b_gate, b_up = (None, None) if bias is None else (bias[:, :inner], bias[:, inner:])
        glu = moe.glu
        cfg = self.hf.config
        alpha = limit = None
        if glu is not None and glu.alpha is not None:
            alpha = float(config_value(cfg, glu.alpha, what="GLU alpha"))
        if glu is not None and glu.limit is not None:
            limit = float(config_value(cfg, glu.limit, what="GLU clamp limit"))
        act = _ScaledSwish(alpha) if alpha is not None else getattr(experts, str(moe.act))
        return FFNWeights(
            w_gate=w_gate,
            w_up=w_up,
            w_down=w_down,
            b_up=b_up,
            b_down=getattr(experts, moe.down_bias) if moe.down_bias else None,
            act=act,
            b_gate=b_gate,
            limit=limit,
            up_offset=float(glu.up_offset) if glu is not None else 0.0,
            gate_on=moe.routing.apply_to,
            project=_FusedProjection(stored, bias, transposed, moe.split == "interleaved"),
        )

    def _dense_act(self, layer: int, d: DenseMLPSpec) -> Any:
        if d.act_name is None:
            return self.module(layer, d.act)
        from transformers.activations import ACT2FN

        return ACT2FN[d.act_name]

    def _dense_weights(self, layer: int, d: DenseMLPSpec) -> FFNWeights:
        down = self.module(layer, d.down)
        b_down = getattr(down, "bias", None)
        if d.gate_up:
            fused = self.module(layer, d.gate_up)
            w = _linear_weight(fused, d.layout)
            inner = w.shape[0] // 2
            b = getattr(fused, "bias", None)
            return FFNWeights(
                w_gate=w[None, :inner],
                w_up=w[None, inner:],
                w_down=_linear_weight(down, d.layout)[None],
                b_up=None if b is None else b[None, inner:],
                b_down=None if b_down is None else b_down[None],
                act=self._dense_act(layer, d),
                b_gate=None if b is None else b[None, :inner],
            )
        up = self.module(layer, d.up)
        gate = self.module(layer, d.gate) if d.gate else None
        b_up = getattr(up, "bias", None)
        b_gate = None if gate is None else getattr(gate, "bias", None)
        return FFNWeights(
            w_gate=None if gate is None else _linear_weight(gate, d.layout)[None],
            w_up=_linear_weight(up, d.layout)[None],
            w_down=_linear_weight(down, d.layout)[None],
            b_up=None if b_up is None else b_up[None],
            b_down=None if b_down is None else b_down[None],
            act=self._dense_act(layer, d),
            b_gate=None if b_gate is None else b_gate[None],
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

    # ---- routing and residual scalars --------------------------------------------------
    def routing_rule(self, layer: int) -> RoutingRule:
        """The routing rule of MoE layer ``layer`` with its config values read
        (:func:`mechmoe.adapters.routing.route` applies it)."""
        moe = self.spec.moe
        if moe is None or self.layer_kind(layer) != "moe":
            raise InvalidInputError(f"layer {layer} of {self.name} is dense: it has no router")
        return routing_rule(self.spec, self.hf.config, model_dtype=self.dtype)

    def selection_bias(self, layer: int) -> Float[Tensor, " expert"] | None:
        """The bias MoE layer ``layer`` adds to its scores for choosing only, if any."""
        return self._router_param(layer, "selection_bias")

    def expert_scale(self, layer: int) -> Float[Tensor, " expert"] | None:
        """The per-expert factor on MoE layer ``layer``'s routing weights, if any."""
        return self._router_param(layer, "expert_scale")

    def _router_param(self, layer: int, field: str) -> Tensor | None:
        """A router parameter named by the spec, as a flat view (writes reach the model)."""
        moe = self.spec.moe
        if moe is None or self.layer_kind(layer) != "moe":
            return None
        attr = getattr(moe.routing, field)
        if not attr:
            return None
        owner = moe.router if moe.routing.params_on == "router" else self.spec.ffn
        return self.module(layer, f"{owner}.{attr}").view(-1)

    def renormalizes(self, layer: int | None = None) -> bool:
        """Whether top-k routing weights are renormalised to sum to one."""
        moe = self.spec.moe
        if moe is None:
            return False
        if layer is None:
            layer = next((i for i, k in enumerate(self._kinds) if k == "moe"), None)
            if layer is None:
                return False
        return self.routing_rule(layer).renormalize

    def _factor(self, factor: Factor | None, what: str) -> tuple[float, bool] | None:
        if factor is None:
            return None
        return float(config_value(self.hf.config, factor.value, what=what)), factor.divide

    def scale_residual(self, value: Tensor) -> Tensor:
        """A sub-layer's output as it is added to the residual stream (Granite's
        ``residual_multiplier``; unchanged where the family has none)."""
        f = self._factor(self.spec.residual_scale, "residual multiplier")
        if f is None:
            return value
        return value / f[0] if f[1] else value * f[0]

    def scale_logits(self, value: Tensor) -> Tensor:
        """The unembedding's output as the model's logits (Granite divides by
        ``logits_scaling``; unchanged where the family has no logit scale)."""
        f = self._factor(self.spec.logit_scale, "logit scale")
        if f is None:
            return value
        return value / f[0] if f[1] else value * f[0]

    @property
    def residual_multiplier(self) -> float:
        """The factor :meth:`scale_residual` applies, as one number (1 where none)."""
        f = self._factor(self.spec.residual_scale, "residual multiplier")
        return 1.0 if f is None else (1.0 / f[0] if f[1] else f[0])

    @property
    def logit_multiplier(self) -> float:
        """The factor :meth:`scale_logits` applies, as one number (1 where none)."""
        f = self._factor(self.spec.logit_scale, "logit scale")
        return 1.0 if f is None else (1.0 / f[0] if f[1] else f[0])

    @property
    def experts_implementation(self) -> str:
        """How transformers runs this model's fused experts (``"eager"``, ``"grouped_mm"``,
        …; ``""`` for a dense model). The capture recomputes the chosen experts' neurons
        from the weights, so it is exact under either (tests/adapters/test_families.py)."""
        if not self.dims.is_moe:
            return ""
        return str(getattr(self.hf.config, "_experts_implementation", None) or "grouped_mm")

    @property
    def routing_summary(self) -> str:
        """The routing rule in words (``""`` for a dense model), for provenance."""
        rules = []
        for i, kind in enumerate(self._kinds):
            if kind == "moe":
                text = self.routing_rule(i).describe()
                if self.selection_bias(i) is not None:
                    text += ", selection bias"
                if text not in rules:
                    rules.append(text)
        return "; ".join(rules)

    def reroute(self, layer: int, router: RouterOutput, request: RoutingRequest) -> RouterOutput:
        """Layer ``layer``'s routing under a merged routing request, re-derived by this
        model's own rule (:func:`mechmoe.adapters.routing.reroute`, with the layer's rule,
        selection bias and per-expert scale from the adapter spec)."""
        return reroute(
            router,
            request,
            self.routing_rule(layer),
            layer=layer,
            bias=self.selection_bias(layer),
            expert_scale=self.expert_scale(layer),
        )

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


class _ScaledSwish:
    """``g · σ(alpha · g)``, computed as GPT-OSS does."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def __call__(self, gate: Tensor) -> Tensor:
        return gate * torch.sigmoid(gate * self.alpha)

    def __repr__(self) -> str:
        return f"ScaledSwish(alpha={self.alpha:g})"


class _FusedProjection:
    """The gate and up pre-activations of one expert from its stored fused weight, as the
    family computes them (one product, then split): no strided weight copies."""

    def __init__(
        self, stored: Tensor, bias: Tensor | None, transposed: bool, interleaved: bool
    ) -> None:
        self.stored, self.bias = stored, bias
        self.transposed, self.interleaved = transposed, interleaved

    def __call__(self, x: Tensor, expert: int) -> tuple[Tensor, Tensor]:
        w = self.stored[expert]
        out = x @ w if self.transposed else torch.nn.functional.linear(x, w)
        if self.bias is not None:
            out = out + self.bias[expert]
        if self.interleaved:
            return out[..., 0::2], out[..., 1::2]
        gate, up = out.chunk(2, dim=-1)
        return gate, up


def architecture_of(hf: nn.Module) -> str:
    archs = getattr(hf.config, "architectures", None) or []
    return archs[0] if archs else type(hf).__name__


__all__ = ["Model", "architecture_of"]
