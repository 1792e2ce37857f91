"""The TransformerLens backend: captures and edits through a ``TransformerBridge``'s hook points.

TransformerLens 4.3 wraps an HF model in a ``TransformerBridge``: it replaces the model's
submodules, in place, by bridge components that call the original module and fire hook
points on its input and output. This backend finds, for every path of the adapter spec,
the bridge component that wraps that module (the component now at that path, or the one
whose ``original_component`` it is) and hooks it; it never asks which family the model
is. Per layer, in execution order:

==================  ==============================================================
quantity / site     hook point (names for a Llama-like bridge)
==================  ==============================================================
``resid_pre``       the block's ``hook_in`` (``blocks.L.hook_in``); edited there
``z`` / ``heads``   the output projection's ``hook_in`` (``blocks.L.attn.o.hook_in``,
                    aliased ``attn.hook_z``); edited there
``attn_raw``        the output projection's ``hook_out``
``attn_out``        the attention post-norm's ``hook_out`` (OLMo-2: ``ln1_post``)
``resid_mid``       the FFN input norm's ``hook_in`` (``blocks.L.ln2.hook_in``)
``ffn_in``          the FFN's ``hook_in`` (``blocks.L.mlp.hook_in``)
``router``          the router's ``hook_out`` (logits), ``hook_expert_weights`` and
                    ``hook_expert_indices`` (``blocks.L.mlp.gate.*``); edited there
``experts_out``     the experts' ``hook_out`` where the bridge wraps them (Qwen2-MoE);
                    otherwise the FFN's ``hook_out``, which is the experts' sum when the
                    layer has no shared expert (OLMoE, Mixtral)
``ffn_raw`` /       the FFN's ``hook_out`` (``blocks.L.mlp.hook_out``); edited there
``ffn_out`` site
``ffn_out``         the FFN post-norm's ``hook_out`` (OLMo-2: ``ln2_post``)
final residual      the final norm's ``hook_in`` (``ln_final.hook_in``)
logits              the unembedding's ``hook_out`` (``unembed.hook_out``)
==================  ==============================================================

Neuron activations have no hook point; :func:`mechmoe.backends.base.capture` recomputes
them from ``ffn_in`` and the weights, as for every backend.

The bridge computes attention with its own eager code, so results equal the nnsight
backend's bit for bit on a model that runs eager attention, and differ from a model on
PyTorch's fused SDPA kernel by its summation order (about 1e-6 on tiny models, up to 5e-4
in SmolLM2's activations).

Routing edits. The bridge's router fires ``hook_expert_weights`` on the top-k gates
scattered to an ``(rows, experts)`` table, then ``hook_expert_indices`` on the chosen
experts, and finally gathers the gates back from the table at the (possibly replaced)
indices. The backend hands the weights hook a copy of the table, runs the ``router`` edits
once the indices are known, refills that copy with the new gates at the new experts and
returns the new indices: the block then receives exactly the edited gates and experts,
for any ``k``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from mechmoe.backends.base import Backend, RawCapture, RawLayer
from mechmoe.core.edits import SITES, EditContext, Site, apply_edits
from mechmoe.core.errors import InvalidInputError, InvalidTypeError, MechmoeError
from mechmoe.core.types import Batch, ModelView, RouterOutput

HookFn = Callable[[Tensor, Any], Tensor | None]


@dataclass(frozen=True)
class _LayerHooks:
    """The hook-point names of one decoder layer (``None`` where the spec has no module)."""

    block_in: str
    z: str | None  # None on a layer without attention heads
    attn_raw: str
    attn_out: str | None
    resid_mid: str | None
    ffn_in: str
    ffn_out: str
    ffn_post: str | None
    router_logits: str | None = None
    router_weights: str | None = None
    router_index: str | None = None
    # where routed experts' sum can be edited: the experts' own hook_out, or the FFN's
    # hook_out when the FFN is nothing but the experts; None when neither is reachable
    experts_out: str | None = None
    # the down projection of a shared expert that sits beside the FFN module
    shared_out: str | None = None


def _attr_path(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _component(obj: Any) -> Any:
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    return obj if isinstance(obj, GeneralizedComponent) else None


def _wrappers(bridge: Any) -> dict[int, Any]:
    """Bridge components by the id of the module they wrap.

    Mostly a spec path already resolves to the component (it replaced the module in its
    parent); some bridges keep the HF module in place and wrap it elsewhere (GPT-2's
    attention output projection is the attention bridge's ``o``)."""
    out: dict[int, Any] = {}
    for module in bridge.modules():
        if _component(module) is not None and module.original_component is not None:
            out.setdefault(id(module.original_component), module)
    return out


def _hook_name(obj: Any, which: str, *, what: str, wrappers: dict[int, Any]) -> str:
    """The name of ``obj``'s hook point ``which``, or one line saying the bridge has none."""
    comp = _component(obj) or wrappers.get(id(obj))
    point = getattr(comp, which, None) if comp is not None else None
    name = getattr(point, "name", None)
    if not name:
        raise MechmoeError(
            f"the TransformerLens bridge has no hook on {what} ({type(obj).__name__}); "
            "mechmoe cannot capture it with backend='transformerlens': use backend='nnsight'"
        )
    return str(name)


def _check_router_layout(
    router: Any, returns: tuple[str, ...], what: str, wrappers: dict[int, Any]
) -> None:
    """Refuse a router bridge that hooks other elements of the router's output than the
    ones the adapter spec names (a bridge written for another transformers version)."""
    comp = _component(router) or wrappers.get(id(router))
    n = len(returns)
    for field, attr in (
        ("logits", "logits_index"),
        ("weights", "weights_index"),
        ("index", "indices_index"),
    ):
        at = getattr(comp, attr, None)
        if at is not None and at % n != returns.index(field):
            raise MechmoeError(
                f"the TransformerLens bridge reads the router's {field} from element {at % n} "
                f"of its output, but {what} returns them at element {returns.index(field)} "
                f"({', '.join(returns)}): the bridge does not match this transformers "
                "version's router; use backend='nnsight'"
            )


def _check_bridge(bridge: Any) -> None:
    from transformer_lens.model_bridge import TransformerBridge

    if not isinstance(bridge, TransformerBridge):
        raise InvalidTypeError(
            f"expected a TransformerLens TransformerBridge, got {type(bridge).__name__}"
        )
    if getattr(bridge, "_weights_processed", False) or getattr(bridge, "compatibility_mode", False):
        raise InvalidInputError(
            "the bridge is in compatibility mode (folded or centred weights); mechmoe reads "
            "the model's own weights: boot the bridge without enable_compatibility_mode()"
        )


class _NeedsWeights(Exception):
    """The bridge cannot be booted on a weightless (meta-device) copy of this family."""


def boot_bridge(model: ModelView) -> Any:
    """A ``TransformerBridge`` around the HF model ``model`` holds (modified in place).

    This is what ``TransformerBridge.boot_transformers(..., hf_model=...)`` does once the
    model is loaded, without its tokenizer set-up: mechmoe tokenizes with its own
    tokenizer, and TransformerLens's set-up reloads (or fails on) tokenizers built in
    memory.
    """
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    hf = model.hf
    blocks = _attr_path(hf, model.spec.layers)
    if blocks is not None and len(blocks) and _component(blocks[0]) is not None:
        raise InvalidInputError(
            f"{model.name} is already inside a TransformerLens bridge; wrap that bridge "
            "(mechmoe.wrap(bridge)) instead of its HF model"
        )
    archs = getattr(hf.config, "architectures", None) or [type(hf).__name__]
    try:
        bridge = build_bridge_from_module(
            hf,
            str(archs[0]),
            # the bridge adapter records settings on the config it is given
            hf_config=copy.deepcopy(hf.config),
            model_name=model.name,
        )
    except (ValueError, NotImplementedError, KeyError) as err:
        if "meta" in str(err) and any(p.is_meta for p in hf.parameters()):
            # the bridge needs real weights to boot this family (GPT-2's fused QKV is
            # split at boot): a weightless check cannot tell, the real load will
            raise _NeedsWeights from None
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise MechmoeError(
            f"TransformerLens cannot bridge {model.name} ({archs[0]}): {first}; "
            "use backend='nnsight'"
        ) from None
    return bridge.eval()


def bridge_parts(bridge: Any, *, tokenizer: Any = None) -> tuple[Any, Any, str]:
    """The HF model, tokenizer and name of a bridge the user built, checked for mechmoe.

    ``mechmoe.wrap(bridge)`` builds its :class:`~mechmoe.model.Model` from these (with
    ``backend="transformerlens", native=bridge``). ``tokenizer`` defaults to the bridge's
    own (which, like TransformerLens, prepends BOS).
    """
    _check_bridge(bridge)
    tok = tokenizer if tokenizer is not None else getattr(bridge, "tokenizer", None)
    if tok is None:
        raise InvalidInputError("the bridge has no tokenizer; pass tokenizer=")
    name = str(getattr(bridge.cfg, "model_name", "") or type(bridge.original_model).__name__)
    return bridge.original_model, tok, name


class TransformerLensBackend(Backend):
    """Captures and edits through the hook points of a TransformerLens ``TransformerBridge``.

    ``native`` is a bridge around ``model.hf`` (from :func:`bridge_parts`); without one,
    the backend builds a bridge around ``model.hf``, which replaces its submodules by
    bridge components in place and switches it to eager attention.
    """

    name: ClassVar[str] = "transformerlens"
    sites: frozenset[Site] = frozenset(SITES)
    # whether the bridge hooks every quantity mechmoe reads depends on the family and the
    # installed TransformerLens: found out on a weightless copy, before weights are read
    checks_before_weights: ClassVar[bool] = True

    @classmethod
    def unwrap(cls, native: Any, *, tokenizer: Any = None) -> tuple[Any, Any, str]:
        """A ``TransformerBridge``'s HF model, tokenizer and name (:func:`bridge_parts`)."""
        return bridge_parts(native, tokenizer=tokenizer)

    def __init__(self, model: ModelView, native: Any = None) -> None:
        super().__init__(model, native)
        if native is None:
            try:
                self.native = boot_bridge(model)
            except _NeedsWeights:  # a check before weights that cannot decide: loading will
                self._layers, self._final_in, self._logits = [], "", ""
                self.decided = False
                return
        else:
            _check_bridge(native)
            if native.original_model is not model.hf:
                raise InvalidInputError("the bridge wraps another HF model than this handle's")
        try:
            self._layers, self._final_in, self._logits = self._hook_names()
        except MechmoeError as err:
            archs = getattr(model.hf.config, "architectures", None) or [type(model.hf).__name__]
            raise MechmoeError(f"{model.name} ({archs[0]}): {err}") from None
        # routed experts are reachable only where the bridge wraps them, or where the FFN
        # is nothing but them; an edit there elsewhere fails by name before the pass
        if any(h.router_index is not None and h.experts_out is None for h in self._layers):
            self.sites = frozenset(SITES) - {"experts_out"}

    @property
    def bridge(self) -> Any:
        """The ``TransformerBridge`` this backend runs."""
        return self.native

    def _hook_names(self) -> tuple[list[_LayerHooks], str, str]:
        model, spec = self.model, self.model.spec
        hf = model.hf
        blocks = _attr_path(hf, spec.layers)
        wrappers = _wrappers(self.bridge)
        out: list[_LayerHooks] = []
        for li in range(model.dims.n_layers):

            def hook(path: str | None, which: str, li: int = li) -> str | None:
                if path is None:
                    return None
                obj = model.module(li, path)
                return _hook_name(obj, which, what=f"{path} of layer {li}", wrappers=wrappers)

            ffn_in = hook(spec.ffn, "hook_in")
            ffn_out = hook(spec.ffn, "hook_out")
            assert ffn_in is not None and ffn_out is not None
            heads = model.dims.has_heads(li)
            mixer = spec.attn_out_proj if heads else str(spec.other_mixer)
            layer = _LayerHooks(
                block_in=_hook_name(
                    blocks[li], "hook_in", what=f"decoder layer {li}", wrappers=wrappers
                ),
                z=hook(spec.attn_out_proj, "hook_in") if heads else None,
                attn_raw=str(hook(mixer, "hook_out")),
                attn_out=hook(spec.attn_out_norm, "hook_out"),
                resid_mid=hook(spec.ffn_in_norm, "hook_in"),
                ffn_in=ffn_in,
                ffn_out=ffn_out,
                ffn_post=hook(spec.ffn_out_norm, "hook_out"),
            )
            if model.layer_kind(li) == "moe":
                assert spec.moe is not None
                router = model.module(li, spec.moe.router)
                what = f"{spec.moe.router} of layer {li}"
                experts_obj = model.module(li, spec.moe.experts)
                experts = _component(experts_obj) or wrappers.get(id(experts_obj))
                if experts is not None:
                    experts_out: str | None = experts.hook_out.name
                elif spec.moe.shared is None:
                    experts_out = ffn_out
                else:
                    experts_out = None
                if spec.moe.routing.returns != ("logits", "weights", "index"):
                    raise MechmoeError(
                        f"the router of layer {li} ({spec.moe.router}) returns "
                        f"{', '.join(spec.moe.routing.returns)}, and the TransformerLens "
                        "bridge hooks only routers that return (logits, weights, index); "
                        "use backend='nnsight'"
                    )
                _check_router_layout(router, spec.moe.routing.returns, what, wrappers)
                layer = replace(
                    layer,
                    shared_out=None
                    if spec.moe.shared_in_ffn or spec.moe.shared is None
                    else hook(spec.moe.shared.down, "hook_out"),
                    router_logits=_hook_name(router, "hook_out", what=what, wrappers=wrappers),
                    router_weights=_hook_name(
                        router, "hook_expert_weights", what=what, wrappers=wrappers
                    ),
                    router_index=_hook_name(
                        router, "hook_expert_indices", what=what, wrappers=wrappers
                    ),
                    experts_out=experts_out,
                )
            out.append(layer)
        final_in = _hook_name(
            _attr_path(hf, spec.final_norm), "hook_in", what=spec.final_norm, wrappers=wrappers
        )
        logits = _hook_name(
            _attr_path(hf, spec.unembed), "hook_out", what=spec.unembed, wrappers=wrappers
        )
        return out, final_in, logits

    @torch.no_grad()
    def run(self, batch: Batch, edits: Sequence[Any], ctx: EditContext) -> RawCapture:
        B, T = batch.size, batch.seq_len
        H, D = self.model.dims.n_heads, self.model.dims.head_dim
        bidx, pidx, flat = batch.flat_positions()
        rows = flat.reshape(-1)
        sites = {s for e in edits for s in e.sites}
        keep_x = "ffn_in" in ctx.needs

        def edit(site: str, layer: int, value: Any) -> Any:
            return apply_edits(edits, site, layer, value, ctx)

        recs: list[dict[str, Any]] = [{} for _ in self._layers]
        top: dict[str, Tensor] = {}
        hooks: list[tuple[str, HookFn]] = []

        def keep(rec: dict[str, Any], key: str) -> HookFn:
            def fn(x: Tensor, hook: Any) -> None:
                # (batch, seq, d), or (batch·seq, d) where a block flattens its tokens
                rec[key] = x.reshape(B, T, -1)[bidx, pidx]

            return fn

        for li, (names, rec) in enumerate(zip(self._layers, recs, strict=True)):

            def resid_pre(x: Tensor, hook: Any, li: int = li, rec: dict = rec) -> Tensor:
                if "resid_pre" in sites:
                    x = edit("resid_pre", li, x)
                rec["resid_pre"] = x[bidx, pidx]
                return x

            def z(x: Tensor, hook: Any, li: int = li, rec: dict = rec) -> Tensor:
                # the bridge presents z per head, (batch, seq, head, head_dim)
                if "heads" in sites:
                    x = edit("heads", li, x.reshape(B, T, H, D)).reshape(x.shape)
                rec["z"] = x.reshape(B, T, H * D)[bidx, pidx]
                return x

            def ffn_in(x: Tensor, hook: Any, li: int = li, rec: dict = rec) -> None:
                rec["ffn_in"] = x[bidx, pidx]
                if keep_x:  # only when an edit reads it: every layer's full input is L·B·T·d
                    ctx.record_ffn_in(li, x.reshape(B * T, -1))

            hooks.append((names.block_in, resid_pre))
            if names.z is not None:
                hooks.append((names.z, z))
            hooks.append((names.attn_raw, keep(rec, "attn_raw")))
            if names.attn_out is not None:
                hooks.append((names.attn_out, keep(rec, "attn_out")))
            if names.resid_mid is not None:
                hooks.append((names.resid_mid, keep(rec, "resid_mid")))
            hooks.append((names.ffn_in, ffn_in))
            if names.router_index is not None:
                hooks += self._router_hooks(li, names, rec, rows, edit, "router" in sites, ctx)
            edit_experts = "experts_out" in sites and names.router_index is not None
            if edit_experts and names.experts_out != names.ffn_out:
                assert names.experts_out is not None

                def experts_out(x: Tensor, hook: Any, li: int = li) -> Tensor:
                    return edit("experts_out", li, x.reshape(-1, x.shape[-1])).reshape(x.shape)

                hooks.append((names.experts_out, experts_out))

            def ffn_out(
                x: Tensor,
                hook: Any,
                li: int = li,
                rec: dict = rec,
                experts_here: bool = edit_experts and names.experts_out == names.ffn_out,
            ) -> Tensor:
                if experts_here:  # this FFN is the routed experts alone
                    x = edit("experts_out", li, x.reshape(-1, x.shape[-1])).reshape(x.shape)
                if "ffn_out" in sites:
                    x = edit("ffn_out", li, x.reshape(B, T, -1)).reshape(x.shape)
                rec["ffn_raw"] = x.reshape(B, T, -1)[bidx, pidx]
                return x

            hooks.append((names.ffn_out, ffn_out))
            if names.shared_out is not None:
                hooks.append((names.shared_out, keep(rec, "shared_raw")))
            if names.ffn_post is not None:
                hooks.append((names.ffn_post, keep(rec, "ffn_out")))
        hooks.append((self._final_in, keep(top, "final_resid")))
        hooks.append((self._logits, keep(top, "logits")))

        with self.bridge.hooks(fwd_hooks=hooks):
            self.bridge(
                batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
                return_type=None,
            )
        return self._raw(recs, top)

    def _router_hooks(
        self,
        li: int,
        names: _LayerHooks,
        rec: dict[str, Any],
        rows: Tensor,
        edit: Callable[[str, int, Any], Any],
        editing: bool,
        ctx: EditContext,
    ) -> list[tuple[str, HookFn]]:
        """The three router hooks of layer ``li``: logits, the gate table, the indices."""
        keep_routing = "routing" in ctx.needs

        def logits(x: Tensor, hook: Any) -> None:
            rec["_logits"] = x

        def weights(x: Tensor, hook: Any) -> Tensor | None:
            if not editing:
                rec["_table"] = x
                return None
            # a copy equal to the bridge's own (so it does not re-route), refilled in place
            # with the edited gates once the indices hook has run the edits
            rec["_table"] = table = x.clone()
            return table

        def indices(index: Tensor, hook: Any) -> Tensor:
            # popped: the full (batch·seq)-row tensors are not kept past this layer
            table, router_logits = rec.pop("_table"), rec.pop("_logits")
            # top-k gates arrive scattered to (rows, experts), unless k is every expert
            scattered = table.shape[-1] != index.shape[-1]
            gates = table.gather(-1, index.long()) if scattered else table
            out = RouterOutput(router_logits, gates, index)
            if editing:
                out = edit("router", li, out)
                _refill(table, out, scattered, li)
                out = RouterOutput(out.logits, out.weights, out.index.to(index.dtype))
            if keep_routing:
                ctx.record_routing(li, out)
            rec["router"] = out.rows(rows)
            return out.index

        return [
            (str(names.router_logits), logits),
            (str(names.router_weights), weights),
            (str(names.router_index), indices),
        ]

    def _raw(self, recs: list[dict[str, Any]], top: dict[str, Tensor]) -> RawCapture:
        missing = [k for k in ("final_resid", "logits") if k not in top]
        for li, (rec, names) in enumerate(zip(recs, self._layers, strict=True)):
            need = ("resid_pre", "z", "attn_raw", "ffn_in", "ffn_raw")
            if names.z is None:
                need = tuple(k for k in need if k != "z")
            missing += [f"{k} of layer {li}" for k in need if k not in rec]
        if missing:
            raise MechmoeError(
                f"the TransformerLens bridge did not fire the hook for {missing[0]} "
                "(a bridge option such as use_attn_result changes which hooks fire); "
                "boot the bridge with its default options"
            )
        layers = tuple(
            RawLayer(
                resid_pre=rec["resid_pre"],
                z=rec.get("z"),
                attn_raw=rec["attn_raw"],
                attn_out=rec.get("attn_out"),
                resid_mid=rec.get("resid_mid", rec["ffn_in"]),
                ffn_in=rec["ffn_in"],
                router=rec.get("router"),
                ffn_raw=rec["ffn_raw"],
                ffn_out=rec.get("ffn_out"),
                shared_raw=rec.get("shared_raw"),
            )
            for rec in recs
        )
        return RawCapture(layers=layers, final_resid=top["final_resid"], logits=top["logits"])


def _refill(table: Tensor, out: RouterOutput, scattered: bool, layer: int) -> None:
    """Write edited gates into the bridge's gate table, where the block reads them back."""
    if not scattered:
        if out.weights.shape != table.shape:
            raise MechmoeError(
                f"layer {layer}: this bridge's router uses every expert, so a routing edit "
                "cannot change top-k on backend='transformerlens'"
            )
        table.copy_(out.weights)
        return
    index = out.index.long()
    ordered = index.sort(dim=-1).values
    if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
        raise InvalidInputError(
            f"a router edit at layer {layer} chose one expert twice for a token; "
            "each token's experts must be distinct"
        )
    table.zero_()
    table.scatter_(-1, index, out.weights.to(table.dtype))


__all__ = ["TransformerLensBackend", "boot_bridge", "bridge_parts"]
