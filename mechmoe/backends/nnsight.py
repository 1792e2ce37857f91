"""The nnsight backend: the one place in mechmoe that knows about nnsight.

One ``trace`` over the batch visits, layer by layer and in execution order, the module
boundaries named by the adapter spec; it gathers the requested positions inside the
trace (so only ``batch × pos`` rows are kept) and applies edits at their sites.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from mechmoe.backends.base import (
    Backend,
    RawCapture,
    RawLayer,
    first,
    read_router,
    write_router,
)
from mechmoe.core.edits import SITES, EditContext, Site, apply_edits
from mechmoe.core.types import Batch, RouterOutput


def _envoy(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _keeps_logits(hf: Any) -> bool:
    """Whether the HF model can compute logits at chosen positions only (``logits_to_keep``)."""
    try:
        return "logits_to_keep" in inspect.signature(hf.forward).parameters
    except (TypeError, ValueError):
        return False


def _edit_stacked(stacked: Any, n_experts: int, fn: Any) -> Any:
    """Edit the summed output of experts that return every expert's output stacked
    ``(E·rows, d)`` for the block to sum (Llama-4): the edit sees the sum, and the change
    it makes is added to the first expert's rows, so the block's sum is the edited value."""
    per = stacked.reshape(n_experts, -1, stacked.shape[-1])
    total = per.sum(dim=0)
    out = per.clone()
    out[0] = out[0] + (fn(total) - total).to(out.dtype)
    return out.reshape(stacked.shape)


class NnsightBackend(Backend):
    """Captures and edits through one ``nnsight`` trace per batch."""

    name: ClassVar[str] = "nnsight"
    sites: frozenset[Site] = frozenset(SITES)

    @property
    def envoy(self) -> Any:
        """The nnsight wrapper of the HF model (built on first use: importing nnsight costs ~3 s)."""
        if self.native is None:
            from nnsight import NNsight

            self.native = NNsight(self.model.hf)
        return self.native

    def run(self, batch: Batch, edits: Sequence[Any], ctx: EditContext) -> RawCapture:
        model = self.model
        spec, dims = model.spec, model.dims
        B, T = batch.size, batch.seq_len
        H, D = dims.n_heads, dims.head_dim
        bidx, pidx, flat = batch.flat_positions()
        sites = {s for e in edits for s in e.sites}
        keep_x, keep_routing = "ffn_in" in ctx.needs, "routing" in ctx.needs

        def edit(site: str, layer: int, value: Any) -> Any:
            return apply_edits(edits, site, layer, value, ctx)

        # Logits only at the captured positions: the unembedding over every position of a
        # padded batch is the largest product of the pass (B·T·d·vocab) and only B·pos
        # of its rows are read. ``logits_to_keep`` keeps the model's own head code.
        kwargs: dict[str, Any] = {}
        lpidx = pidx
        if _keeps_logits(self.model.hf):
            keep, lpidx = torch.unique(pidx, return_inverse=True)
            kwargs["logits_to_keep"] = keep
        saved: list[dict[str, Any]] = []
        with self.envoy.trace(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            **kwargs,
        ):
            layers = _envoy(self.envoy, spec.layers)
            for li in range(dims.n_layers):
                layer = layers[li]
                rec: dict[str, Any] = {}
                if "resid_pre" in sites:
                    layer.input = edit("resid_pre", li, layer.input)
                rec["resid_pre"] = layer.input[bidx, pidx].save()

                if dims.has_heads(li):
                    o_proj = _envoy(layer, spec.attn_out_proj)
                    if "heads" in sites:
                        new = edit("heads", li, o_proj.input.reshape(B, T, H, D))
                        o_proj.input = new.reshape(B, T, H * D)
                    rec["z"] = o_proj.input[bidx, pidx].save()
                    rec["attn_raw"] = o_proj.output[bidx, pidx].save()
                else:  # a token mixer without heads (Mamba, linear attention)
                    mixer = _envoy(layer, str(spec.other_mixer))
                    rec["attn_raw"] = first(mixer.output).reshape(B, T, -1)[bidx, pidx].save()
                if spec.attn_out_norm:
                    rec["attn_out"] = _envoy(layer, spec.attn_out_norm).output[bidx, pidx].save()

                if spec.ffn_in_norm:
                    norm = _envoy(layer, spec.ffn_in_norm)
                    rec["resid_mid"] = norm.input[bidx, pidx].save()
                    x_full = norm.output
                else:
                    x_full = _envoy(layer, spec.ffn).input
                    rec["resid_mid"] = x_full[bidx, pidx].save()
                rec["ffn_in"] = x_full[bidx, pidx].save()
                if keep_x:  # only when an edit reads it: every layer's full input is L·B·T·d
                    ctx.record_ffn_in(li, x_full.reshape(B * T, -1))

                moe_layer = model.layer_kind(li) == "moe"
                if moe_layer:
                    assert spec.moe is not None
                    router = _envoy(layer, spec.moe.router)
                    out = router.output
                    routing = read_router(model, li, out)
                    if "router" in sites:
                        routing = edit("router", li, routing)
                        router.output = write_router(model, li, out, routing)
                    if keep_routing:
                        ctx.record_routing(li, routing)
                    rows = flat.reshape(-1)
                    rec["router"] = (
                        routing.logits[rows].save(),
                        routing.weights[rows].save(),
                        routing.index[rows].save(),
                    )
                    if "experts_out" in sites:
                        experts = _envoy(layer, spec.moe.experts)
                        if spec.moe.output == "stacked":
                            experts.output = _edit_stacked(
                                experts.output,
                                dims.n_experts[li],
                                lambda v, li=li: edit("experts_out", li, v),
                            )
                        else:
                            experts.output = edit("experts_out", li, experts.output)

                ffn = _envoy(layer, spec.ffn)
                ffn_out = ffn.output
                hidden = first(ffn_out)
                if "ffn_out" in sites:  # some blocks return (rows, d): edits see (B, T, d)
                    new = edit("ffn_out", li, hidden.reshape(B, T, -1)).reshape(hidden.shape)
                    ffn.output = (new, *ffn_out[1:]) if isinstance(ffn_out, tuple) else new
                    hidden = new
                rec["ffn_raw"] = hidden.reshape(B, T, -1)[bidx, pidx].save()
                if moe_layer and spec.moe is not None and not spec.moe.shared_in_ffn:
                    assert spec.moe.shared is not None
                    shared = _envoy(layer, spec.moe.shared.down)
                    rec["shared_raw"] = shared.output.reshape(B, T, -1)[bidx, pidx].save()
                if spec.ffn_out_norm:
                    rec["ffn_out"] = _envoy(layer, spec.ffn_out_norm).output[bidx, pidx].save()
                saved.append(rec)

            final_resid = _envoy(self.envoy, spec.final_norm).input[bidx, pidx].save()
            logits_out = _envoy(self.envoy, spec.unembed).output[bidx, lpidx].save()

        return RawCapture(
            layers=tuple(
                RawLayer(
                    resid_pre=rec["resid_pre"],
                    z=rec.get("z"),
                    attn_raw=rec["attn_raw"],
                    attn_out=rec.get("attn_out"),
                    resid_mid=rec["resid_mid"],
                    ffn_in=rec["ffn_in"],
                    router=RouterOutput(*rec["router"]) if "router" in rec else None,
                    ffn_raw=rec["ffn_raw"],
                    ffn_out=rec.get("ffn_out"),
                    shared_raw=rec.get("shared_raw"),
                )
                for rec in saved
            ),
            final_resid=final_resid,
            logits=logits_out,
        )


__all__ = ["NnsightBackend"]
