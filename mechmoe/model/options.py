"""How to load a model, as one value: :class:`LoadOptions`.

Every place that loads a model (``load``, checkpoint sources, sweeps, the demo, the
CLI) takes one :class:`LoadOptions` instead of a row of keywords, so a new load option is
one field here and its use in :func:`mechmoe.model.load`. ``load(name, dtype="bf16")``
still works: keywords build the value.

This module imports neither torch nor transformers, so the CLI can build options before
anything heavy is loaded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, no_type_check

from mechmoe._types import DEFAULT_BACKEND
from mechmoe.core.errors import InvalidInputError, InvalidTypeError

if TYPE_CHECKING:
    import torch


class LoadKeywords(TypedDict, total=False):
    """The keywords :func:`mechmoe.model.load` accepts, one per :class:`LoadOptions` field."""

    revision: str | None
    backend: str
    dtype: str | torch.dtype
    device: str | torch.device | None
    device_map: str | dict[str, Any] | None
    tokenizer: Any
    experts_implementation: str
    attn_implementation: str | None
    trust_remote_code: bool
    allow_missing_weights: bool


def _is_tokenizer_object(value: Any) -> bool:
    # A loaded tokenizer: anything that can encode text (HF tokenizers, tokenizers.Tokenizer).
    return callable(getattr(value, "encode", None))


# The class checks its own fields' types in __post_init__ and raises mechmoe's errors;
# no_type_check keeps the test-time type checker from raising its own first.
@no_type_check
@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """Everything besides the model's name that decides how it is loaded.

    Parameters
    ----------
    revision
        A hub branch, tag or commit (e.g. ``"step5000-tokens20B"``); hub names only.
    backend
        The capture backend's registered name (``"nnsight"``, ``"transformerlens"``).
    dtype, device
        Weights' dtype (default fp32, which the exactness checks assume: ``"float32"``,
        ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``) and device (``"cpu"``,
        ``"cuda"``, ``"cuda:N"``, ``"auto"`` for CUDA when present).
    device_map
        Passed to ``from_pretrained`` (``"auto"`` spreads a large model over the GPUs);
        ``device`` is then not applied.
    tokenizer
        A tokenizer object, or where to load one from: a folder, a ``tokenizer.json``, a
        ``.gguf`` file, a hub id or a built-in model name. For model folders without one
        (training checkpoints often have none).
    experts_implementation
        How transformers runs fused experts: ``"eager"`` (default) or ``"grouped_mm"``
        (identical results); ``"batched_mm"`` is not exact and is refused.
    attn_implementation
        How transformers runs attention (default: its own choice, usually SDPA).
    trust_remote_code
        Run the modeling code a hub repo or folder ships (``auto_map`` in its config) to
        build its config, tokenizer and model. Off by default: such a model is refused
        with a line saying so. Only for models transformers loads (not for a model
        already built, nor one a named source builds).
    allow_missing_weights
        Load a checkpoint whose weights do not match its config (tensors missing from the
        file, tensors the model has no place for, tensors of another shape). Off by
        default: such a model is refused with one line naming the tensors, because
        transformers would run it with those parameters freshly *random*. On, the model
        loads with them random (or dropped), a warning says which, and every result
        records it (``load_options`` and ``weights_report`` in its provenance). Only for
        models transformers loads.

    Examples
    --------
    >>> opts = LoadOptions(dtype="bfloat16")
    >>> opts.replace(revision="step1000-tokens4B").revision
    'step1000-tokens4B'
    >>> LoadOptions.build(None, device="cpu") == LoadOptions()
    True
    """

    revision: str | None = None
    backend: str = DEFAULT_BACKEND
    dtype: str | torch.dtype = "float32"
    device: str | torch.device | None = "cpu"
    device_map: str | dict[str, Any] | None = None
    tokenizer: Any = None
    experts_implementation: str = "eager"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    allow_missing_weights: bool = False

    def __post_init__(self) -> None:
        _check_optional_str("revision", self.revision)
        if not isinstance(self.backend, str) or not self.backend:
            raise InvalidTypeError(
                f"backend= takes a backend's name, got {type(self.backend).__name__}"
            )
        if not isinstance(self.dtype, str) and type(self.dtype).__module__ != "torch":
            raise InvalidTypeError(
                f"dtype= takes a name such as 'float32' or a torch.dtype, got {type(self.dtype).__name__}"
            )
        if (
            self.device is not None
            and not isinstance(self.device, str)
            and type(self.device).__module__ != "torch"
        ):
            raise InvalidTypeError(
                f"device= takes a name such as 'cpu' or 'cuda:0', got {type(self.device).__name__}"
            )
        if self.device_map is not None and not isinstance(self.device_map, (str, Mapping)):
            raise InvalidTypeError(
                f"device_map= takes 'auto' or a mapping, got {type(self.device_map).__name__}"
            )
        tok = self.tokenizer
        if not (tok is None or isinstance(tok, (str, os.PathLike)) or _is_tokenizer_object(tok)):
            raise InvalidTypeError(
                f"tokenizer= takes a tokenizer or a path, hub id or model name to load one from, "
                f"got {type(tok).__name__}"
            )
        if isinstance(tok, str) and not tok.strip():
            raise InvalidInputError("tokenizer= is an empty name")
        if not isinstance(self.experts_implementation, str):
            raise InvalidTypeError("experts_implementation= takes 'eager' or 'grouped_mm'")
        _check_optional_str("attn_implementation", self.attn_implementation)
        for flag in ("trust_remote_code", "allow_missing_weights"):
            if not isinstance(getattr(self, flag), bool):
                raise InvalidTypeError(
                    f"{flag}= takes True or False, got {type(getattr(self, flag)).__name__}"
                )

    @classmethod
    def build(cls, options: LoadOptions | None = None, /, **keywords: Any) -> LoadOptions:
        """``options`` (or the defaults) with ``keywords`` replacing its fields.

        Unknown keywords are an :class:`~mechmoe.core.errors.InvalidTypeError` naming the
        known ones.
        """
        if options is not None and not isinstance(options, LoadOptions):
            raise InvalidTypeError(
                f"options= takes a LoadOptions, got {type(options).__name__}; "
                "pass load options as keywords or LoadOptions(...)"
            )
        base = options if options is not None else cls()
        return base.replace(**keywords) if keywords else base

    def replace(self, **changes: Any) -> LoadOptions:
        """A copy with ``changes`` applied (the value itself is immutable)."""
        unknown = sorted(set(changes) - _FIELDS)
        if unknown:
            raise InvalidTypeError(
                f"unknown load option {unknown[0]!r}; load options are {', '.join(sorted(_FIELDS))}"
            )
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The options as JSON-able values (for provenance and a store's config).

        A tokenizer object is named by its class, a ``torch.dtype`` by its short name.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "dtype" and not isinstance(value, str):
                value = str(value).removeprefix("torch.")
            elif f.name == "device" and value is not None:
                value = str(value)
            elif f.name == "tokenizer" and value is not None:
                value = (
                    os.fspath(value)
                    if isinstance(value, (str, os.PathLike))
                    else type(value).__name__
                )
            elif f.name == "device_map" and isinstance(value, Mapping):
                value = {str(k): str(v) for k, v in value.items()}
            out[f.name] = value
        return out


_FIELDS = frozenset(f.name for f in dataclasses.fields(LoadOptions))


def _check_optional_str(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise InvalidTypeError(f"{name}= takes a string, got {type(value).__name__}")


__all__ = ["LoadKeywords", "LoadOptions"]
