"""Attribution results: top-n listings with labels and decoded tokens, and saving.

Examples
--------
>>> from mechmoe.testing import tiny_model
>>> from mechmoe.ops.attribution import attribute
>>> from mechmoe.ops.results import top_items
>>> model = tiny_model("mixtral")
>>> ds = attribute(model, ["The capital of France is"], level="neuron")
>>> items = top_items(ds, 3, model=model)
>>> [it.rank for it in items]
[1, 2, 3]
>>> items[0].label.startswith("L")
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mechmoe.core.errors import DamagedFileError, InvalidInputError, NonFiniteError
from mechmoe.core.writer import (
    checksummed_zarr_encoding,
    marker,
    prepare_output,
    verify_output,
    zarr_location,
)

if TYPE_CHECKING:
    import xarray as xr

    from mechmoe.model import Model

#: File suffixes :func:`save_result` writes.
SUFFIXES = (".zarr", ".nc")


@dataclass(frozen=True)
class TopItem:
    """One ranked item of an attribution result.

    ``expert`` is ``"shared"`` for a Qwen2-MoE shared expert; fields that do not apply
    to the level are ``None``. ``tokens`` are the tokens the item's value vector
    promotes most (neurons only), decoded.
    """

    rank: int
    label: str
    score: float
    layer: int | None
    expert: int | str | None = None
    neuron: int | None = None
    head: int | None = None
    n_chosen: int | None = None
    tokens: tuple[str, ...] = ()


def _label(
    level: str, layer: int, expert: Any, neuron: Any, head: Any, *, dense: bool, sublayer: Any
) -> str:
    if level == "layer":  # both sub-layers ranked together: L3 attn, L1 ffn
        return f"L{layer} {sublayer}"
    if level == "neuron":
        return f"L{layer} N{neuron}" if dense else f"L{layer} E{expert} N{neuron}"
    if level == "expert":
        return f"L{layer} E{expert}"
    if level == "head":
        return f"L{layer} H{head}"
    return f"L{layer} {level}"


def _coord(value: Any) -> Any:
    # indices are ints; the sublayer of level="layer" is a name
    return int(value) if isinstance(value, (int, np.integer)) else str(value)


def _candidates(ds: xr.Dataset) -> list[tuple[float, dict[str, Any]]]:
    level = ds.attrs.get("level", "")
    out: list[tuple[float, dict[str, Any]]] = []
    score = ds["score"]
    values = score.values
    coords = [ds[dim].values for dim in score.dims]  # once: not per item (46k for SmolLM2)
    for flat in np.flatnonzero(np.isfinite(values)):
        pos = np.unravel_index(flat, values.shape)
        item = {dim: _coord(c[i]) for dim, c, i in zip(score.dims, coords, pos, strict=True)}
        out.append((float(values[pos]), item))
    if "shared_score" in ds:
        sh = ds["shared_score"]
        sv = sh.values
        for flat in np.flatnonzero(np.isfinite(sv)):
            pos = np.unravel_index(flat, sv.shape)
            item = {"layer": int(ds["layer"].values[pos[0]]), "expert": "shared"}
            if level == "neuron":
                item["neuron"] = int(pos[1])
            out.append((float(sv[pos]), item))
    return out


def top_items(
    ds: xr.Dataset,
    n: int = 10,
    *,
    model: Model | None = None,
    n_tokens: int = 5,
    ascending: bool = False,
) -> list[TopItem]:
    """The ``n`` highest-scoring items of an :func:`~mechmoe.ops.attribution.attribute` result.

    Items are ranked by ``score`` (the mean over prompts), highest first, or lowest
    first with ``ascending=True``; shared-expert scores compete with routed ones. With
    ``model`` given, neuron items carry the ``n_tokens`` tokens their value vector
    ``W_U(γ ⊙ W_down[:, k])`` promotes most, signed by the neuron's mean gated activation
    (``gated_act``), i.e. the tokens the neuron actually pushed up.
    """
    if "score" not in ds:
        raise InvalidInputError(
            "this dataset has no 'score' variable; is it an attribution result?"
        )
    if n < 1:
        raise InvalidInputError(f"n={n}: ask for at least one item")
    level = ds.attrs.get("level", "")
    cands = _candidates(ds)
    if not cands:
        raise NonFiniteError(
            f"the {level or 'attribution'} result of {ds.attrs.get('model', 'the model')!r} "
            "holds no finite score (every score is NaN or infinite), so there is nothing to "
            "rank; the model or its inputs gave non-finite values"
        )
    cands.sort(key=lambda t: t[0], reverse=not ascending)
    kinds = ds["layer_kind"].values if "layer_kind" in ds.coords else None
    out = []
    for rank, (value, item) in enumerate(cands[:n], start=1):
        layer = item.get("layer")
        expert = item.get("expert")
        dense = kinds is not None and layer is not None and kinds[layer] == "dense"
        n_chosen = None
        if "n_chosen" in ds and isinstance(expert, int):
            n_chosen = int(ds["n_chosen"].values[layer, expert])
        elif expert == "shared":
            n_chosen = int(ds.attrs.get("n_prompts", 0)) or None
        tokens: tuple[str, ...] = ()
        if model is not None and level == "neuron" and layer is not None:
            sign = _sign(ds, layer, expert, item["neuron"])
            tokens = tuple(
                promoted_tokens(model, layer, expert, item["neuron"], k=n_tokens, sign=sign)  # type: ignore[arg-type]
            )
        label = _label(
            level,
            layer,  # type: ignore[arg-type]
            expert,
            item.get("neuron"),
            item.get("head"),
            dense=dense,
            sublayer=item.get("sublayer"),
        )
        if expert == "shared":
            label = f"L{layer} shared" + (f" N{item['neuron']}" if "neuron" in item else "")
        out.append(
            TopItem(
                rank=rank,
                label=label,
                score=value,
                layer=layer,
                expert=expert,
                neuron=item.get("neuron"),
                head=item.get("head"),
                n_chosen=n_chosen,
                tokens=tokens,
            )
        )
    return out


def _sign(ds: xr.Dataset, layer: int, expert: Any, neuron: int) -> float:
    """Sign of the neuron's mean gated activation (SwiGLU activations can be negative)."""
    if expert == "shared":
        var = ds.get("shared_gated_act")
        value = None if var is None else var.values[layer, neuron]
    else:
        var = ds.get("gated_act")
        value = None if var is None else var.values[layer, expert, neuron]
    return -1.0 if value is not None and value < 0 else 1.0


def promoted_tokens(
    model: Model, layer: int, expert: int | str, neuron: int, *, k: int = 5, sign: float = 1.0
) -> list[str]:
    """Decoded top-``k`` tokens of a neuron's value vector read through the final norm's γ.

    ``sign=-1`` reads the vector as the neuron adds it when its activation is negative
    (top tokens of ``−W_U(γ ⊙ W_down[:, k])``). ``expert="shared"`` reads the layer's
    shared expert (Qwen2-MoE).
    """
    import torch

    from mechmoe.ops._lpi_scoring import _shape

    if expert == "shared":
        shared = model.shared_weights(layer)
        if shared is None:
            raise InvalidInputError(f"layer {layer} has no shared expert")
        w_down = shared[0].w_down[0]
    else:
        w_down = model.ffn_weights(layer).w_down[int(expert)]
    with torch.no_grad():
        col = _shape(model.final_norm, w_down[:, neuron].detach())
        logits = sign * (model.W_U.detach().float() @ col)
        ids = logits.topk(min(k, logits.shape[0])).indices.tolist()
    return [model.tokenizer.decode([i]) for i in ids]


# ---- saving -------------------------------------------------------------------------------
#: The writer kind of a saved result (see :mod:`mechmoe.core.writer`).
RESULT_KIND = "result"


def _check_suffix(path: Path) -> None:
    if path.suffix not in SUFFIXES:
        raise InvalidInputError(f"output {str(path)!r} must end in .zarr or .nc")


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Validate an output path before any work is done.

    The suffix must be ``.zarr`` or ``.nc``, the folder must exist and be writable, and
    anything already at ``path`` must be an earlier mechmoe result (replaced only with
    ``overwrite=True``); see :func:`mechmoe.core.writer.prepare_output`.
    """
    path = Path(path)
    _check_suffix(path)
    return prepare_output(path, kind=RESULT_KIND, overwrite=overwrite).path


def _storable(ds: xr.Dataset) -> xr.Dataset:
    """Object-dtype string variables as fixed unicode, which both netCDF and zarr store."""
    ds = ds.copy()
    for name in list(ds.variables):
        var = ds[name]
        if var.dtype == object:
            ds[name] = var.astype(str)
    ds.attrs = {k: (int(v) if isinstance(v, bool) else v) for k, v in ds.attrs.items()}
    ds.attrs.update(marker(RESULT_KIND))
    # Data in memory (no dask threads can outlive an interrupted write), and no encoding
    # carried over from a store that was read (a zarr v2 codec cannot be written to v3).
    return ds.drop_encoding().load()


def save_result(ds: xr.Dataset, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``ds`` to ``path`` (``.zarr`` folder or ``.nc`` file) safely.

    The data go to a temporary sibling which is renamed into place only once complete,
    so a failure or an interrupt leaves no partial output and keeps an earlier result.
    An earlier mechmoe result at ``path`` is replaced only with ``overwrite=True``;
    anything else there is never touched (:class:`~mechmoe.core.errors.OutputError`), and
    files you added inside an earlier ``.zarr`` result are kept. A ``.zarr`` result is
    zarr v3 with a CRC-32C on every chunk, and its marker records the size and checksum
    of every file, so :func:`open_result` detects a damaged, cut or missing chunk.
    """
    path = Path(path)
    _check_suffix(path)
    out = prepare_output(path, kind=RESULT_KIND, overwrite=overwrite)
    ds = _storable(ds)
    with out.writing() as tmp:
        if path.suffix == ".zarr":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.to_zarr(
                    tmp,
                    mode="w",
                    consolidated=True,
                    zarr_format=3,
                    encoding=checksummed_zarr_encoding(ds),
                    write_empty_chunks=True,
                )
        else:
            # Encode in memory, then write plain bytes: a full disk is one OSError, not
            # a failure deep inside HDF5.
            data = ds.to_netcdf(engine="h5netcdf")
            with open(tmp, "wb") as fh:
                fh.write(data)
    return out.path


def open_result(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a result written by :func:`save_result` (loaded into memory).

    A ``.zarr`` result is checked file by file against the sizes and checksums recorded
    when it was written; a damaged one raises :class:`~mechmoe.core.errors.DamagedFileError`
    naming the variable and chunk, never returns NaN or garbage.
    """
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"no result at {str(path)!r}")
    if path.suffix not in SUFFIXES:
        raise InvalidInputError(f"{str(path)!r} is not a result: results end in .zarr or .nc")
    damaged = verify_output(path) if path.is_dir() else []
    if damaged:
        raise DamagedFileError(f"result {str(path)!r} is damaged: {_damage_text(damaged)}")
    try:
        if path.suffix == ".zarr":
            ds = xr.open_zarr(path).load()
        else:
            ds = xr.load_dataset(path, engine="h5netcdf")
    except Exception as exc:
        what = "a zarr store" if path.suffix == ".zarr" else "a netCDF file"
        raise InvalidInputError(
            f"{str(path)!r} is not a readable result ({what} was expected: "
            f"{type(exc).__name__}); pass a file written by mechmoe --out"
        ) from None
    for key in marker(RESULT_KIND):
        ds.attrs.pop(key, None)
    return ds


def _damage_text(damaged: list[tuple[str, str]]) -> str:
    shown = []
    for rel, problem in damaged[:3]:
        var, what = zarr_location(rel)
        shown.append(f"{'variable ' + repr(var) + ', ' if var else ''}{what} {problem}")
    more = f" (and {len(damaged) - 3} more files)" if len(damaged) > 3 else ""
    return (
        "; ".join(shown)
        + more
        + "; nothing was read from it, so run the command that wrote it again "
        "(with --overwrite) to recompute it"
    )


__all__ = [
    "RESULT_KIND",
    "SUFFIXES",
    "TopItem",
    "check_output_path",
    "open_result",
    "promoted_tokens",
    "save_result",
    "top_items",
]
