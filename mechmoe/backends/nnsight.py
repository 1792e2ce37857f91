"""The capture pass on nnsight: the one place in mechmoe that knows about nnsight.

One ``trace`` over the batch visits, layer by layer and in execution order, the module
boundaries named by the adapter spec; it gathers the requested positions inside the
trace (so only ``batch × pos`` rows are kept) and applies edits at their sites. Neuron
activations are recomputed afterwards from the FFN input and the weights, only for the
experts each position chose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from mechmoe.backends.base import Batch, Capture, Edit, EditContext, LayerCapture
from mechmoe.errors import InvalidInputError

if TYPE_CHECKING:
    from mechmoe.model import Model


def as_edits(interventions: Any) -> list[Edit]:
    """Normalise ``None`` / one edit / a plan / a list to the flat list a pass runs.

    mechmoe's own interventions in a list are composed into one plan first, so a list
    means the same as ``a + b + …`` (routing values at one layer merge into one routing
    decision, and the combination is validated as a whole). Third-party edits run after
    them, in list order.
    """
    if interventions is None:
        return []
    if hasattr(interventions, "edits"):
        return list(interventions.edits)  # a composed plan
    if isinstance(interventions, Edit):
        return [interventions]
    if isinstance(interventions, (str, bytes, dict)) or not hasattr(interventions, "__iter__"):
        from mechmoe.errors import InvalidTypeError

        raise InvalidTypeError(
            f"interventions= got a {type(interventions).__name__}: pass an intervention "
            "(e.g. ZeroExperts([(3, 12)])), a plan, or a list of them"
        )
    from mechmoe.ops.interventions import Intervention, Plan, compose

    items = list(interventions)
    ours = [x for x in items if isinstance(x, (Intervention, Plan))]
    out: list[Edit] = as_edits(compose(*ours)) if ours else []
    for item in items:
        if not isinstance(item, (Intervention, Plan)):
            out.extend(as_edits(item))
    return out


def _envoy(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


class _Sites:
    """Runs the edits registered for a site; a no-op where none is."""

    def __init__(self, edits: list[Edit], ctx: EditContext) -> None:
        self.edits, self.ctx = edits, ctx

    def wants(self, site: str) -> bool:
        return any(site in e.sites for e in self.edits)

    def __call__(self, site: str, layer: int, value: Any) -> Any:
        for e in self.edits:
            if site in e.sites:
                new = e.apply(site, layer, value, self.ctx)
                if new is not None:
                    value = new
        return value


@torch.no_grad()
def run_capture(model: Model, batch: Batch, *, interventions: Any = None) -> Capture:
    """One forward pass over ``batch`` with ``interventions`` applied; see :class:`Capture`."""
    edits = as_edits(interventions)
    for e in edits:
        e.validate(model)
    ctx = EditContext(model=model, batch=batch)
    sites = _Sites(edits, ctx)
    spec, dims = model.spec, model.dims
    B, T = batch.size, batch.seq_len
    H, D = dims.n_heads, dims.head_dim
    bidx = torch.arange(B, device=batch.positions.device)[:, None].expand_as(batch.positions)
    pidx = batch.positions
    flat = bidx * T + pidx

    saved: list[dict[str, Any]] = []
    envoy = model.nn
    with envoy.trace(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ):
        layers = _envoy(envoy, spec.layers)
        for li in range(dims.n_layers):
            layer = layers[li]
            rec: dict[str, Any] = {}
            if sites.wants("resid_pre"):
                layer.input = sites("resid_pre", li, layer.input)
            rec["resid_pre"] = layer.input[bidx, pidx].save()

            o_proj = _envoy(layer, spec.attn_out_proj)
            if sites.wants("heads"):
                z = o_proj.input
                new = sites("heads", li, z.reshape(B, T, H, D))
                o_proj.input = new.reshape(B, T, H * D)
            rec["z"] = o_proj.input[bidx, pidx].save()
            rec["attn_raw"] = o_proj.output[bidx, pidx].save()
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
            if edits:  # kept only for edits: holding every layer's full input costs L·B·T·d
                ctx.state[(li, "ffn_in")] = x_full.reshape(B * T, -1)

            if model.layer_kind(li) == "moe":
                assert spec.moe is not None
                router = _envoy(layer, spec.moe.router)
                if sites.wants("router"):
                    router.output = tuple(sites("router", li, tuple(router.output)))
                logits, weights, index = router.output
                if edits:
                    ctx.state[(li, "routing")] = (logits, weights, index)
                rec["router_logits"] = logits[flat].save()
                rec["expert_gate"] = weights[flat].save()
                rec["expert_idx"] = index[flat].save()
                if sites.wants("experts_out"):
                    experts = _envoy(layer, spec.moe.experts)
                    experts.output = sites("experts_out", li, experts.output)

            ffn = _envoy(layer, spec.ffn)
            if sites.wants("ffn_out"):
                ffn.output = sites("ffn_out", li, ffn.output)
            rec["ffn_raw"] = ffn.output[bidx, pidx].save()
            if spec.ffn_out_norm:
                rec["ffn_out"] = _envoy(layer, spec.ffn_out_norm).output[bidx, pidx].save()
            saved.append(rec)

        final_resid = _envoy(envoy, spec.final_norm).input[bidx, pidx].save()
        logits_out = _envoy(envoy, spec.unembed).output[bidx, pidx].save()

    layer_caps = tuple(_finish_layer(model, li, rec, B) for li, rec in enumerate(saved))
    return Capture(
        batch=batch,
        layers=layer_caps,
        final_resid=final_resid,
        logits=logits_out,
        meta={
            "model": model.name,
            "revision": model.revision or "",
            "adapter": model.spec.name,
            "interventions": repr(edits) if edits else "",
        },
    )


def _finish_layer(model: Model, li: int, rec: dict[str, Any], B: int) -> LayerCapture:
    """Derive heads and neuron activations from what the trace saved."""
    dims = model.dims
    H, D = dims.n_heads, dims.head_dim
    z = rec["z"]
    P = z.shape[1]
    head_z = z.reshape(B, P, H, D)
    w_o = model.W_O(li).reshape(-1, H, D)
    heads = torch.einsum("bphk,dhk->bphd", head_z.to(w_o.dtype), w_o)
    x = rec["ffn_in"]
    weights = model.ffn_weights(li)
    kind = model.layer_kind(li)
    shared_acts = shared_gate = None
    if kind == "moe":
        idx = rec["expert_idx"].reshape(B, P, -1)
        gate = rec["expert_gate"].reshape(B, P, -1)
        router_logits = rec["router_logits"].reshape(B, P, -1)
        acts = _chosen_activations(weights, x, idx)
        shared = model.shared_weights(li)
        if shared is not None:
            sw, g = shared
            shared_acts = sw.activations(x.reshape(B * P, -1), 0).reshape(B, P, -1)
            if g is not None:
                shared_gate = torch.sigmoid(x @ g.T).reshape(B, P)
    else:
        if model.spec.dense is None:  # pragma: no cover - guarded by Model._check_paths
            raise InvalidInputError(f"layer {li} has no FFN spec")
        idx = torch.zeros((B, P, 1), dtype=torch.long, device=x.device)
        gate = torch.ones((B, P, 1), dtype=x.dtype, device=x.device)
        router_logits = None
        acts = weights.activations(x.reshape(B * P, -1), 0).reshape(B, P, 1, -1)
    attn_raw = rec["attn_raw"]
    ffn_raw = rec["ffn_raw"]
    return LayerCapture(
        resid_pre=rec["resid_pre"],
        head_z=head_z,
        heads=heads,
        attn_raw=attn_raw,
        attn_out=rec.get("attn_out", attn_raw),
        resid_mid=rec["resid_mid"],
        ffn_in=x,
        router_logits=router_logits,
        expert_idx=idx,
        expert_gate=gate,
        acts=acts,
        shared_acts=shared_acts,
        shared_gate=shared_gate,
        ffn_raw=ffn_raw,
        ffn_out=rec.get("ffn_out", ffn_raw),
        kind=kind,
    )


def _chosen_activations(weights: Any, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Activations of each chosen expert, grouped by expert so each weight is read once."""
    B, P, K = idx.shape
    flat_x = x.reshape(B * P, -1)
    flat_idx = idx.reshape(B * P, K)
    out = torch.zeros((B * P, K, weights.w_up.shape[1]), dtype=x.dtype, device=x.device)
    for e in torch.unique(flat_idx).tolist():
        rows, slots = torch.nonzero(flat_idx == e, as_tuple=True)
        out[rows, slots] = weights.activations(flat_x[rows], e).to(out.dtype)
    return out.reshape(B, P, K, -1)


__all__ = ["as_edits", "run_capture"]
