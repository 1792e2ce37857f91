"""Provenance: the one helper that builds a result's attrs.

Every labeled result says where it came from: the model (name, revision, training step and
tokens when known, adapter, dtype, a hash of the weights), the probe set (its relation
names and a hash of its content), the options the operation ran with, and the versions of
mechmoe, torch, transformers and nnsight. :func:`provenance` returns them as a flat dict
whose values are all ``str``, ``int`` or ``float``, so both zarr and netCDF store them.

The model is duck-typed (``name``, ``revision``, ``spec.name``, ``dims``, ``hf`` or
``named_parameters``); nothing here imports torch at import time.

Examples
--------
>>> from mechmoe.core.provenance import provenance
>>> attrs = provenance(options={"k": 10, "ks": (1, 10), "exact": True}, step=1000)
>>> attrs["step"], attrs["k"], attrs["ks"], attrs["exact"]
(1000, 10, '1,10', 1)
>>> attrs["options"]
'{"exact": true, "k": 10, "ks": [1, 10]}'
"""

from __future__ import annotations

import hashlib
import json
import math
import weakref
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from typing import Any

from mechmoe._version import __version__ as _MECHMOE_VERSION
from mechmoe.core.errors import InvalidInputError

Attr = str | int | float

#: Keys :func:`provenance` sets itself; options may not use them.
RESERVED: frozenset[str] = frozenset(
    {
        "model",
        "revision",
        "adapter",
        "backend",
        "dtype",
        "step",
        "tokens",
        "is_moe",
        "top_k",
        "n_experts",
        "load_options",
        "weights_hash",
        "probe",
        "probe_hash",
        "probe_items",
        "options",
        "mechmoe_version",
        "torch_version",
        "transformers_version",
        "nnsight_version",
    }
)

_LIBRARIES = ("torch", "transformers", "nnsight")


def versions() -> dict[str, str]:
    """Versions of mechmoe and the libraries that shape its numbers ("" if not installed).

    Read from package metadata, so nothing is imported.
    """
    out = {"mechmoe_version": _MECHMOE_VERSION}
    for lib in _LIBRARIES:
        try:
            out[f"{lib}_version"] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[f"{lib}_version"] = ""
    return out


# ---- attr values ------------------------------------------------------------------------
def attr_value(value: Any) -> Attr | None:
    """``value`` as a storable attr (str/int/float), or ``None`` if it has no flat form.

    Booleans become 0/1, ``None`` becomes ``""``, numpy scalars their Python value, and a
    list or tuple of scalars a comma-joined string.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, int, float)):
        return value
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        return attr_value(item())
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (str, int, float)) or _is_scalar(v) for v in value
    ):
        return ",".join(str(attr_value(v)) for v in value)
    return None


def _is_scalar(value: Any) -> bool:
    return callable(getattr(value, "item", None)) and getattr(value, "ndim", None) == 0


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return repr(value)


def options_json(options: Mapping[str, Any]) -> str:
    """Options as canonical JSON (sorted keys; tuples as lists; other objects by ``repr``)."""
    return json.dumps(dict(options), sort_keys=True, default=_json_default)


# ---- probes -------------------------------------------------------------------------------
def probe_hash(probe: Any) -> str:
    """A stable content hash of a probe set (items and templates) or a list of prompts.

    Two probe sets hash alike exactly when they hold the same items (relation, subject,
    gold objects, prompt, in order) and the same relation metadata (name, type, templates,
    template used). The file a relation was read from is not part of the hash, so a copy
    of the data elsewhere hashes the same.

    Examples
    --------
    >>> from mechmoe.core.provenance import probe_hash
    >>> probe_hash(["a is", "b is"]) == probe_hash(("a is", "b is"))
    True
    >>> probe_hash(["a is", "b is"]) == probe_hash(["b is", "a is"])
    False
    """
    if isinstance(probe, str):
        probe = [probe]
    if hasattr(probe, "items") and hasattr(probe, "relations"):
        content: Any = {
            "items": [
                [
                    it.relation,
                    it.subject,
                    list(getattr(it, "objects", ()) or (it.object,)),
                    it.prompt,
                ]
                for it in probe.items
            ],
            "relations": [
                [
                    m.name,
                    m.relation_type,
                    list(m.templates),
                    list(m.templates_zs),
                    m.template,
                ]
                for m in probe.relations
            ],
        }
    else:
        content = {"prompts": [str(p) for p in probe]}
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def _probe_attrs(probe: Any) -> dict[str, Attr]:
    if isinstance(probe, str):
        probe = [probe]
    names = getattr(probe, "relation_names", None)
    return {
        "probe": ",".join(names) if names is not None else "",
        "probe_hash": probe_hash(probe),
        "probe_items": len(probe),
    }


# ---- weights ------------------------------------------------------------------------------
# Hashes already computed, per torch module, with the fingerprint they were computed at.
_HASHES: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()


def _module(model: Any) -> Any:
    module = getattr(model, "hf", model)
    if not hasattr(module, "state_dict"):
        raise TypeError(f"cannot hash the weights of a {type(model).__name__}: it has no modules")
    return module


def weights_hash(model: Any, *, refresh: bool = False) -> str:
    """A stable hash of a model's weights: blake2b over every tensor of its state dict.

    Tensors are hashed in name order, each with its name, dtype and shape, then its raw
    bytes (so the same checkpoint loaded in another dtype hashes differently). ``model``
    is a :class:`mechmoe.Model` or a torch module.

    Cost: one pass over the weights' bytes on the CPU (GPU tensors are copied over one at
    a time), about 0.3–1 GB/s: a few ms for the tiny test models, ~1 s for SmolLM2-135M
    in fp32, ~20–40 s for a 7B model in bf16. The result is cached per module together
    with each tensor's storage address and version counter, so asking again after no
    change is free; edits made in place through ``.data`` bypass the version counter, so
    pass ``refresh=True`` after such an edit.

    Examples
    --------
    >>> from mechmoe.testing import tiny_model
    >>> from mechmoe.core.provenance import weights_hash
    >>> weights_hash(tiny_model("llama")) == weights_hash(tiny_model("llama"))
    True
    >>> weights_hash(tiny_model("llama")) == weights_hash(tiny_model("llama", seed=1))
    False
    """
    module = _module(model)
    tensors = sorted(module.state_dict(keep_vars=True).items())
    fingerprint = tuple(
        (name, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype), str(t.device))
        for name, t in tensors
    )
    cached = None if refresh else _HASHES.get(module)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name, t in tensors:
        if t.device.type == "meta":
            raise InvalidInputError(
                f"weight {name!r} is not loaded (meta device), so the weights cannot be "
                "hashed; load the model fully (without disk offload)"
            )
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        data = t.detach().reshape(-1).contiguous().cpu()
        h.update(data.view(torch.uint8).numpy().data)
    digest = h.hexdigest()
    try:
        _HASHES[module] = (fingerprint, digest)
    except TypeError:  # not weak-referenceable: no cache
        pass
    return digest


def weights_hash_soon(model: Any) -> Future[str] | None:
    """:func:`weights_hash` started on a background thread (``None`` if not hashable).

    For callers that hash a model they then run: the hash reads only the weights'
    bytes, and ``hashlib`` releases the GIL while it does, so it overlaps the caller's
    own work. Pass ``future.result()`` on as ``provenance(weights=...)``.
    """
    if not hasattr(getattr(model, "hf", model), "state_dict"):
        return None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mechmoe-weights-hash")
    try:
        return pool.submit(weights_hash, model)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one task


def _model_attrs(model: Any, *, weights: bool | str) -> dict[str, Attr]:
    out: dict[str, Attr] = {
        "model": str(getattr(model, "name", "") or type(model).__name__),
        "revision": str(getattr(model, "revision", "") or ""),
    }
    spec = getattr(model, "spec", None)
    if spec is not None and getattr(spec, "name", None):
        out["adapter"] = str(spec.name)
    backend = getattr(model, "backend", None)
    if isinstance(backend, str) and backend:
        out["backend"] = backend
    dims = getattr(model, "dims", None)
    if dims is not None:
        out["is_moe"] = int(bool(dims.is_moe))
        out["top_k"] = int(max(dims.top_k)) if dims.is_moe else 1
        out["n_experts"] = int(max(dims.n_experts)) if dims.is_moe else 1
    for key in ("routing_summary", "experts_implementation"):  # MoE handles describe both
        value = getattr(model, key, None)
        if isinstance(value, str) and value:
            out[key.removesuffix("_summary")] = value
    try:
        dtype = getattr(model, "dtype", None)
    except StopIteration:  # a module without parameters
        dtype = None
    if dtype is not None:
        out["dtype"] = str(dtype).removeprefix("torch.")
    load_options = getattr(model, "load_options", None)
    if load_options is not None:
        out["load_options"] = options_json(load_options.describe())
    weights_report = getattr(model, "weights_report", None)
    if weights_report:
        out["weights_report"] = options_json(weights_report)
    for key in ("step", "tokens"):
        value = getattr(model, key, None)
        if value is not None:
            out[key] = attr_value(value)  # type: ignore[assignment]
    if isinstance(weights, str):
        out["weights_hash"] = weights
    elif weights and hasattr(getattr(model, "hf", model), "state_dict"):
        out["weights_hash"] = weights_hash(model)
    return out


# ---- the helper ---------------------------------------------------------------------------
def provenance(
    model: Any = None,
    *,
    probe: Any = None,
    options: Mapping[str, Any] | None = None,
    weights: bool | str = True,
    **extra: Any,
) -> dict[str, Attr]:
    """The attrs of a result: model, probe, options and versions, all storable.

    Parameters
    ----------
    model
        A :class:`mechmoe.Model` (or anything with ``name``/``revision``; a torch module
        for the weights hash), or ``None``. Gives ``model``, ``revision``, ``adapter``,
        ``backend``, ``dtype``, ``is_moe``/``top_k``/``n_experts`` (1 for dense), ``step``/``tokens``
        when the handle carries them, ``load_options`` (the JSON of the options
        :func:`mechmoe.load` used, when it built the handle), ``weights_report`` (the
        JSON of the tensors that did not load as the config asked, when
        ``allow_missing_weights`` let such a model load) and ``weights_hash``.
    probe
        A :class:`mechmoe.probes.ProbeSet` or a list of prompts: ``probe`` (relation names,
        comma-joined; ``""`` for plain prompts), ``probe_hash`` (see :func:`probe_hash`) and
        ``probe_items``.
    options
        The operation's options: all of them as canonical JSON under ``options``, and each
        one with a flat form (see :func:`attr_value`) under its own name too. Option names
        may not be one of :data:`RESERVED`.
    weights
        ``True`` hashes the weights (:func:`weights_hash`, cached) when the model has
        torch modules; ``False`` leaves ``weights_hash`` out; a string is used as the hash (a caller that already has it).
    **extra
        More attrs, e.g. ``step=`` and ``tokens=`` (override the model's), ``level=``.
        Values are flattened like options; ones without a flat form are JSON-encoded.

    Returns
    -------
    dict
        Attr name → ``str`` | ``int`` | ``float``.

    Examples
    --------
    >>> from mechmoe.testing import tiny_model
    >>> from mechmoe.core.provenance import provenance
    >>> attrs = provenance(tiny_model("olmoe"), probe=["The capital of France is"], tokens=4.2e9)
    >>> attrs["model"], attrs["is_moe"], attrs["top_k"], attrs["probe_items"], attrs["tokens"]
    ('tiny:olmoe', 1, 2, 1, 4200000000.0)
    >>> all(isinstance(v, (str, int, float)) for v in attrs.values())
    True
    """
    out: dict[str, Attr] = {}
    if model is not None:
        out.update(_model_attrs(model, weights=weights))
    elif isinstance(weights, str):
        out["weights_hash"] = weights
    if probe is not None:
        out.update(_probe_attrs(probe))
    if options is not None:
        clash = sorted(set(options) & RESERVED)
        if clash:
            raise ValueError(f"option name {clash[0]!r} is reserved for provenance; rename it")
        out["options"] = options_json(options)
        for key, value in options.items():
            flat = attr_value(value)
            if flat is not None:
                out[str(key)] = flat
    for key, value in extra.items():
        flat = attr_value(value)
        out[str(key)] = flat if flat is not None else json.dumps(value, default=_json_default)
    for key in ("tokens",):
        if key in out and isinstance(out[key], int):
            out[key] = float(out[key])
    if isinstance(out.get("tokens"), float) and math.isnan(out["tokens"]):  # type: ignore[arg-type]
        del out["tokens"]
    out.update(versions())
    return out


def as_attrs(mapping: Mapping[str, Any]) -> dict[str, Attr]:
    """Any mapping with its values made storable (as :func:`provenance` does for extras)."""
    out: dict[str, Attr] = {}
    for key, value in mapping.items():
        flat = attr_value(value)
        out[str(key)] = flat if flat is not None else json.dumps(value, default=_json_default)
    return out


__all__ = [
    "RESERVED",
    "as_attrs",
    "attr_value",
    "options_json",
    "probe_hash",
    "provenance",
    "versions",
    "weights_hash",
]
