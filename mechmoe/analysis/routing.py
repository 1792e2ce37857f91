"""Routing statistics over a run, in the spirit of OLMoE's own analyses.

All read the store's per-token routing record ``routing_choice`` (step, token, layer,
slot): the expert ids of each token's top-k choices on a fixed token set. A dense model
has no router, so these raise :class:`~mechmoe.analysis.NotApplicableError` on a dense
store. Slots of one token hold distinct experts; a negative id (or NaN) means "no
choice" and matches nothing; a step where the record is all NaN (not measured) is left
out.

Examples
--------
>>> import numpy as np, xarray as xr
>>> choice = np.array([[[[0, 1]], [[2, 3]]],     # step 0: token 0 → {0,1}, token 1 → {2,3}
...                    [[[0, 2]], [[2, 3]]]])    # step 1: token 0 → {0,2}, token 1 → {2,3}
>>> ds = xr.Dataset({"routing_choice": (("step", "token", "layer", "slot"), choice)},
...                 coords={"step": [10, 20]})
>>> router_saturation(ds).values.tolist()  # step 0: (1/2 + 2/2) / 2 tokens
[[0.75], [1.0]]
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from mechmoe._types import (
    EXPERT,
    EXPERT_B,
    LAYER,
    RELATION,
    SLOT,
    STEP,
    TOKEN,
    CoactivationNorm,
    SaturationReference,
)
from mechmoe.analysis._common import NotApplicableError
from mechmoe.core.checks import check_choice, entry_point
from mechmoe.core.errors import InvalidInputError


def _routing(ds: xr.Dataset, what: str) -> xr.DataArray:
    if "routing_choice" not in ds.data_vars:
        dense = int(ds.attrs.get("is_moe", 1)) == 0 or ds.sizes.get(EXPERT, 2) == 1
        why = (
            "a dense model has no router"
            if dense
            else "run the sweep with the 'routing' measure to record it"
        )
        raise NotApplicableError(
            f"{what} needs the per-token routing record 'routing_choice', which this store "
            f"lacks: {why}"
        )
    rc = ds["routing_choice"]
    missing = {STEP, TOKEN, LAYER, SLOT} - set(rc.dims)
    if missing:
        raise InvalidInputError(
            f"'routing_choice' must have dims (step, token, layer, slot); it lacks {sorted(missing)}"
        )
    if STEP in rc.coords and np.any(np.diff(rc[STEP].values) < 0):
        rc = rc.sortby(STEP)
    if rc.dtype.kind == "f":
        # NaN-padded by the store at steps where the routing measure was not run
        keep = np.asarray(rc.notnull().any([TOKEN, LAYER, SLOT]).values)
        if not keep.any():
            raise InvalidInputError(f"{what}: no checkpoint has a routing record (all NaN)")
        rc = rc.isel({STEP: np.flatnonzero(keep)}).fillna(-1).astype(np.int64)
    return rc.transpose(STEP, TOKEN, LAYER, SLOT)


def _n_experts(ds: xr.Dataset, choice: np.ndarray) -> int:
    if EXPERT in ds.sizes:
        return int(ds.sizes[EXPERT])
    if "n_experts" in ds.attrs:
        return int(ds.attrs["n_experts"])
    return int(choice.max()) + 1 if choice.size else 0


def _step_coords(rc: xr.DataArray) -> dict[str, xr.DataArray]:
    return {name: c for name, c in rc.coords.items() if c.dims == (STEP,)}


def _membership(choice: np.ndarray, n_experts: int) -> np.ndarray:
    """(token, slot) expert ids → (token, expert) bool: the expert is among the choices."""
    if choice.size and choice.max() >= n_experts:
        raise InvalidInputError(
            f"'routing_choice' names expert {int(choice.max())} but the store has "
            f"{n_experts} experts"
        )
    member = np.zeros((choice.shape[0], n_experts + 1), dtype=bool)
    idx = np.where(choice < 0, n_experts, choice)  # "no choice" goes to a spare column
    member[np.arange(choice.shape[0])[:, None], idx] = True
    return member[:, :n_experts]


@entry_point
def router_saturation(
    ds: xr.Dataset, *, reference: SaturationReference | int = "final"
) -> xr.DataArray:
    """Overlap of each step's top-k choices with a reference checkpoint's, per layer.

    For token ``i`` at layer ``l``, with ``A`` its chosen experts at step ``t`` and ``B``
    those at the reference, the overlap is ``|A ∩ B| / k`` (k = the ``slot`` dim size);
    the saturation is its mean over the token set. ``reference`` is ``"final"`` (the
    last checkpoint, OLMoE's router saturation: 1 there), ``"previous"`` (NaN at the
    first step) or a step number in the store.

    Returns
    -------
    xarray.DataArray
        ``router_saturation`` over (``step``, ``layer``), in [0, 1].
    """
    rc = _routing(ds, "router_saturation")
    values = np.asarray(rc.values)
    n_steps, _, n_layers, k = values.shape
    if isinstance(reference, str):
        check_choice(reference, SaturationReference, name="reference", note="or a step number")
        ref_index = None if reference == "previous" else n_steps - 1
    else:
        steps = [int(x) for x in rc[STEP].values] if STEP in rc.coords else list(range(n_steps))
        if reference not in steps:
            raise InvalidInputError(
                f"reference step {reference} is not in the store; its steps are {steps}"
            )
        ref_index = steps.index(reference)  # type: ignore[arg-type]
    out = np.full((n_steps, n_layers), np.nan)
    for i in range(n_steps):
        j = i - 1 if ref_index is None else ref_index
        if j < 0:
            continue
        a, b = values[i], values[j]
        match = (a[..., :, None] == b[..., None, :]) & (a[..., :, None] >= 0)
        out[i] = match.any(-1).sum(-1).mean(0) / k
    coords = _step_coords(rc)
    if LAYER in rc.coords:
        coords[LAYER] = rc[LAYER]
    return xr.DataArray(
        out,
        dims=(STEP, LAYER),
        coords=coords,
        name="router_saturation",
        attrs={
            "long_name": f"mean over tokens of |top-k(t) & top-k(ref)| / k, reference={reference}",
            "k": int(k),
        },
    )


def _step_index(rc: xr.DataArray, step: int | None) -> int:
    if step is None:
        return rc.sizes[STEP] - 1
    steps = [int(x) for x in rc[STEP].values] if STEP in rc.coords else list(range(rc.sizes[STEP]))
    if step not in steps:
        raise InvalidInputError(f"step {step} is not in the store; its steps are {steps}")
    return steps.index(step)


@entry_point
def coactivation(
    ds: xr.Dataset,
    step: int | None = None,
    *,
    normalize: CoactivationNorm = "conditional",
) -> xr.DataArray:
    """How often two experts of a layer are chosen together for one token, at one step.

    ``count[l, e, b]`` = number of tokens whose top-k at layer ``l`` holds both ``e`` and
    ``b``. With ``normalize="conditional"`` (default) the value is
    ``count[l, e, b] / count[l, e, e]`` = P(``b`` chosen | ``e`` chosen): row ``e`` reads
    "when ``e`` fires, how often ``b`` fires with it" (NaN for a row whose expert was
    never chosen). The diagonal is NaN with ``"conditional"`` (an expert with itself is
    not a pair) and the number of tokens choosing ``e`` with ``"count"``.

    Parameters
    ----------
    step
        A step number of the store; default the final checkpoint.

    Returns
    -------
    xarray.DataArray
        ``coactivation`` over (``layer``, ``expert``, ``expert_b``), attr ``step``.
    """
    check_choice(normalize, CoactivationNorm, name="normalize")
    rc = _routing(ds, "coactivation")
    i = _step_index(rc, step)
    choice = np.asarray(rc.isel({STEP: i}).values)  # (token, layer, slot)
    n_exp = _n_experts(ds, choice)
    n_layers = choice.shape[1]
    counts = np.zeros((n_layers, n_exp, n_exp), dtype=np.int64)
    for layer in range(n_layers):
        m = _membership(choice[:, layer, :], n_exp).astype(np.float64)  # BLAS; exact < 2**53
        counts[layer] = np.rint(m.T @ m).astype(np.int64)
    if normalize == "count":
        values = counts.astype(np.float64)
    else:
        diag = np.diagonal(counts, axis1=1, axis2=2).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = counts / np.where(diag > 0, diag, np.nan)[:, :, None]
        idx = np.arange(n_exp)
        values[:, idx, idx] = np.nan
    expert_ids = ds[EXPERT].values if EXPERT in ds.coords else np.arange(n_exp)
    coords: dict[str, object] = {EXPERT: expert_ids, EXPERT_B: expert_ids}
    if LAYER in rc.coords:
        coords[LAYER] = rc[LAYER].values
    at = rc[STEP].values[i] if STEP in rc.coords else i
    return xr.DataArray(
        values,
        dims=(LAYER, EXPERT, EXPERT_B),
        coords=coords,
        name="coactivation",
        attrs={
            "long_name": (
                "P(expert_b chosen | expert chosen) over the token set"
                if normalize == "conditional"
                else "number of tokens choosing both experts"
            ),
            "step": int(at),
            "normalize": normalize,
        },
    )


def _share_and_entropy(
    counts: np.ndarray, n_routed: np.ndarray, n_categories: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From (category, expert) counts: top share, top category index, normalised entropy."""
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.where(n_routed > 0, n_routed, np.nan)
        top = counts.max(axis=0) / denom
        arg = np.where(n_routed > 0, counts.argmax(axis=0), -1)
        p = counts / denom
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        ent = -plogp.sum(axis=0) / np.log(n_categories) if n_categories >= 2 else np.nan
    ent = np.where(n_routed > 0, ent, np.nan)
    return top, arg, ent


def specialization(ds: xr.Dataset) -> xr.Dataset:
    """How narrowly each expert's routed tokens concentrate, by token id and by relation.

    For step ``t``, layer ``l`` and expert ``e``, the routed tokens are the tokens of the
    record whose top-k holds ``e``. Over them:

    - ``n_routed``: how many there are;
    - ``token_top_share``: the share of them that are the single most frequent token id
      (``token_top_id``; ties → the smallest id; −1 and NaN for an unused expert);
    - ``token_entropy``: normalised entropy ``H / log D`` of their token-id distribution,
      with D the number of distinct ids in the record (1 = spread like the uniform, 0 =
      one id only; NaN for an unused expert or D < 2);
    - ``relation_top_share``, ``relation_top``, ``relation_entropy``: the same over the
      relation of the prompt each token came from (``token_relation``; ties → the
      relation first in sorted order);
    - ``relation_routing`` (step, layer, expert, relation): the share of relation r's
      tokens routed to e, P(e | r); a router that ignores the relation gives every
      relation the same value (``k / E`` on average).

    Shares by token id follow the token frequencies of the record (a frequent token tops
    many experts); ``relation_routing`` compares like with like. Variables whose token
    coordinate (``token_id`` / ``token_relation``) the store lacks are left out.
    """
    rc = _routing(ds, "specialization")
    values = np.asarray(rc.values)
    n_steps, n_tokens, n_layers, _ = values.shape
    n_exp = _n_experts(ds, values)
    has_id = "token_id" in rc.coords
    has_rel = "token_relation" in rc.coords
    if has_id:
        ids, id_inv = np.unique(np.asarray(rc["token_id"].values), return_inverse=True)
    if has_rel:
        rels, rel_inv = np.unique(
            np.asarray(rc["token_relation"].values).astype(str), return_inverse=True
        )
        rel_sizes = np.bincount(rel_inv, minlength=len(rels)).astype(np.float64)
    shape = (n_steps, n_layers, n_exp)
    n_routed = np.zeros(shape, dtype=np.int64)
    tok_top, tok_arg, tok_ent = np.full(shape, np.nan), np.full(shape, -1), np.full(shape, np.nan)
    rel_top, rel_arg, rel_ent = np.full(shape, np.nan), np.full(shape, -1), np.full(shape, np.nan)
    rel_routing = np.full((*shape, len(rels) if has_rel else 0), np.nan)
    for i in range(n_steps):
        for layer in range(n_layers):
            m = _membership(values[i, :, layer, :], n_exp).astype(np.int64)
            n_e = m.sum(axis=0)
            n_routed[i, layer] = n_e
            if has_id:
                counts = np.zeros((len(ids), n_exp), dtype=np.int64)
                np.add.at(counts, id_inv, m)
                tok_top[i, layer], tok_arg[i, layer], tok_ent[i, layer] = _share_and_entropy(
                    counts, n_e, len(ids)
                )
            if has_rel:
                counts = np.zeros((len(rels), n_exp), dtype=np.int64)
                np.add.at(counts, rel_inv, m)
                rel_top[i, layer], rel_arg[i, layer], rel_ent[i, layer] = _share_and_entropy(
                    counts, n_e, len(rels)
                )
                rel_routing[i, layer] = (counts / rel_sizes[:, None]).T
    dims = (STEP, LAYER, EXPERT)
    coords: dict[str, object] = dict(_step_coords(rc))
    if LAYER in rc.coords:
        coords[LAYER] = rc[LAYER].values
    coords[EXPERT] = ds[EXPERT].values if EXPERT in ds.coords else np.arange(n_exp)
    out = xr.Dataset({"n_routed": (dims, n_routed)}, coords=coords)
    if has_id:
        out["token_top_share"] = (dims, tok_top)
        out["token_top_id"] = (dims, np.where(tok_arg >= 0, ids[np.maximum(tok_arg, 0)], -1))
        out["token_entropy"] = (dims, tok_ent)
    if has_rel:
        out["relation_top_share"] = (dims, rel_top)
        out["relation_top"] = (dims, np.where(rel_arg >= 0, rels[np.maximum(rel_arg, 0)], ""))
        out["relation_entropy"] = (dims, rel_ent)
        out["relation_routing"] = ((*dims, RELATION), rel_routing)
        out = out.assign_coords({RELATION: rels})
    out.attrs["n_tokens"] = int(n_tokens)
    return out


__all__ = ["coactivation", "router_saturation", "specialization"]
