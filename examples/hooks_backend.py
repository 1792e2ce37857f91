"""A third backend in about 170 lines: plain PyTorch forward hooks, no extra library.

It shows everything a backend has to do (docs/backends.md): gather the spec's quantities
at the batch's positions, apply edits at the sites it supports, and record what the edits
need. It supports three sites (``resid_pre``, ``heads``, ``ffn_out``), so routing edits
are refused by name before the pass. tests/test_backend_seam.py runs it against
the nnsight backend on every tiny family.

Use it with::

    import mechmoe
    from hooks_backend import HooksBackend

    mechmoe.register_backend("hooks", HooksBackend)
    model = mechmoe.load("tiny:llama", backend="hooks")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from mechmoe.backends import Backend, RawCapture, RawLayer
from mechmoe.backends.base import first as hidden_of
from mechmoe.backends.base import read_router
from mechmoe.core.edits import EditContext, Site, apply_edits
from mechmoe.core.types import Batch


def _get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


class HooksBackend(Backend):
    """Captures and edits with ``register_forward_pre_hook`` / ``register_forward_hook``."""

    name: ClassVar[str] = "hooks"
    sites: ClassVar[frozenset[Site]] = frozenset({"resid_pre", "heads", "ffn_out"})

    def run(self, batch: Batch, edits: Sequence[Any], ctx: EditContext) -> RawCapture:
        model, spec = self.model, self.model.spec
        B, T = batch.size, batch.seq_len
        H, D = model.dims.n_heads, model.dims.head_dim
        bidx, pidx, flat = batch.flat_positions()
        recs: list[dict[str, Any]] = [{} for _ in range(model.dims.n_layers)]
        final: dict[str, Any] = {}
        handles = []

        def pre(module: Any, fn: Any) -> None:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

        def post(module: Any, fn: Any) -> None:
            handles.append(module.register_forward_hook(fn))

        def first(args: tuple, kwargs: dict, key: str) -> Any:
            return args[0] if args else kwargs[key]

        def replaced(args: tuple, kwargs: dict, key: str, value: Any) -> tuple[tuple, dict]:
            return ((value, *args[1:]), kwargs) if args else (args, {**kwargs, key: value})

        for li in range(model.dims.n_layers):
            rec = recs[li]
            layer = _get(model.hf, spec.layers)[li]

            def layer_in(mod, args, kwargs, li=li, rec=rec):
                h = first(args, kwargs, "hidden_states")
                h = apply_edits(edits, "resid_pre", li, h, ctx)
                rec["resid_pre"] = h[bidx, pidx]
                return replaced(args, kwargs, "hidden_states", h)

            def z_in(mod, args, kwargs, li=li, rec=rec):
                z = first(args, kwargs, "input")
                z = apply_edits(edits, "heads", li, z.reshape(B, T, H, D), ctx).reshape(B, T, H * D)
                rec["z"] = z[bidx, pidx]
                return replaced(args, kwargs, "input", z)

            def keep(name, rec=rec):
                # a module's hidden output: the first element of a tuple, (B, T, d) or (B·T, d)
                return lambda mod, args, out: (
                    rec.__setitem__(name, hidden_of(out).reshape(B, T, -1)[bidx, pidx]) and None
                )

            def ffn_input(mod, args, out, li=li, rec=rec):
                rec["ffn_in"] = out[bidx, pidx]
                if "ffn_in" in ctx.needs:
                    ctx.record_ffn_in(li, out.reshape(B * T, -1))

            def routing(mod, args, out, li=li, rec=rec):
                r = read_router(model, li, out)  # the spec says what the router returns
                rec["router"] = r.rows(flat.reshape(-1))
                if "routing" in ctx.needs:
                    ctx.record_routing(li, r)

            def ffn_out(mod, args, out, li=li, rec=rec):
                h = hidden_of(out)
                new = apply_edits(edits, "ffn_out", li, h.reshape(B, T, -1), ctx).reshape(h.shape)
                rec["ffn_raw"] = new.reshape(B, T, -1)[bidx, pidx]
                return (new, *out[1:]) if isinstance(out, tuple) else new

            pre(layer, layer_in)
            if model.dims.has_heads(li):
                o_proj = _get(layer, spec.attn_out_proj)
                pre(o_proj, z_in)
                post(o_proj, keep("attn_raw"))
            else:  # a token mixer without heads (Mamba): its output is what attention adds
                post(_get(layer, spec.other_mixer), keep("attn_raw"))
            if spec.attn_out_norm:
                post(_get(layer, spec.attn_out_norm), keep("attn_out"))
            if spec.ffn_in_norm:
                norm = _get(layer, spec.ffn_in_norm)
                pre(
                    norm,
                    lambda m, a, k, rec=rec: rec.__setitem__(
                        "resid_mid", first(a, k, "hidden_states")[bidx, pidx]
                    ),
                )
                post(norm, ffn_input)
            else:  # the FFN reads the residual stream itself (no input norm)

                def ffn_pre(mod, args, kwargs, li=li, rec=rec):
                    x = first(args, kwargs, "hidden_states")
                    rec["resid_mid"] = x[bidx, pidx]
                    ffn_input(mod, args, x, li=li, rec=rec)

                pre(_get(layer, spec.ffn), ffn_pre)
            if model.layer_kind(li) == "moe":
                post(_get(layer, spec.moe.router), routing)
                if spec.moe.shared is not None and not spec.moe.shared_in_ffn:
                    post(_get(layer, spec.moe.shared.down), keep("shared_raw"))
            post(_get(layer, spec.ffn), ffn_out)
            if spec.ffn_out_norm:
                post(_get(layer, spec.ffn_out_norm), keep("ffn_out"))

        pre(
            _get(model.hf, spec.final_norm),
            lambda m, a, k: final.__setitem__("resid", first(a, k, "hidden_states")[bidx, pidx]),
        )
        post(
            _get(model.hf, spec.unembed),
            lambda m, a, out: final.__setitem__("logits", out[bidx, pidx]),
        )
        try:
            with torch.no_grad():
                model.hf(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )
        finally:
            for h in handles:
                h.remove()
        layers = tuple(
            RawLayer(
                resid_pre=r["resid_pre"],
                z=r.get("z"),
                attn_raw=r["attn_raw"],
                attn_out=r.get("attn_out"),
                resid_mid=r["resid_mid"],
                ffn_in=r["ffn_in"],
                router=r.get("router"),
                ffn_raw=r["ffn_raw"],
                ffn_out=r.get("ffn_out"),
                shared_raw=r.get("shared_raw"),
            )
            for r in recs
        )
        return RawCapture(layers=layers, final_resid=final["resid"], logits=final["logits"])
