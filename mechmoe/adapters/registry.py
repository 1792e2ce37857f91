"""Adapter registry keyed by HF ``architectures`` names.

Built-in specs are registered as ``"module:attr"`` strings and imported on first use;
third-party packages add families through the ``mechmoe.adapters`` entry-point group
(each entry point names an :class:`AdapterSpec`) or by calling :func:`register_adapter`.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points

from mechmoe.adapters.spec import AdapterSpec
from mechmoe.core.errors import UnsupportedArchitectureError

ENTRY_POINT_GROUP = "mechmoe.adapters"

_BUILTIN: dict[str, str] = {
    "OlmoeForCausalLM": "mechmoe.adapters.olmoe:SPEC",
    "MixtralForCausalLM": "mechmoe.adapters.mixtral:SPEC",
    "Qwen2MoeForCausalLM": "mechmoe.adapters.qwen_moe:QWEN2_MOE",
    "Qwen3MoeForCausalLM": "mechmoe.adapters.qwen_moe:QWEN3_MOE",
    "OlmoForCausalLM": "mechmoe.adapters.olmo:SPEC",
    "Olmo2ForCausalLM": "mechmoe.adapters.olmo2:SPEC",
    "LlamaForCausalLM": "mechmoe.adapters.llama:SPEC",
    "Qwen2ForCausalLM": "mechmoe.adapters.qwen2:SPEC",
    "GPT2LMHeadModel": "mechmoe.adapters.gpt2:SPEC",
    "DeepseekV3ForCausalLM": "mechmoe.adapters.deepseek:DEEPSEEK_V3",
    "Glm4MoeForCausalLM": "mechmoe.adapters.deepseek:GLM4_MOE",
    "GptOssForCausalLM": "mechmoe.adapters.gpt_oss:SPEC",
    "Llama4ForCausalLM": "mechmoe.adapters.llama4:SPEC",
    "GraniteMoeForCausalLM": "mechmoe.adapters.granite:GRANITEMOE",
    "GraniteMoeSharedForCausalLM": "mechmoe.adapters.granite:GRANITEMOE_SHARED",
    "JambaForCausalLM": "mechmoe.adapters.jamba:SPEC",
    "PhimoeForCausalLM": "mechmoe.adapters.phimoe:SPEC",
}

_registered: dict[str, AdapterSpec] = {}
_entry_points_loaded = False

ADD_ADAPTER_HINT = (
    "to add one, write an AdapterSpec (see docs/adapters.md) and call "
    "mechmoe.register_adapter(spec) or expose it in the 'mechmoe.adapters' entry-point group"
)


def _import_target(target: str) -> AdapterSpec:
    module_name, _, attr = target.partition(":")
    spec = getattr(importlib.import_module(module_name), attr)
    if not isinstance(spec, AdapterSpec):
        raise TypeError(f"{target} is a {type(spec).__name__}, not an AdapterSpec")
    return spec


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        spec = ep.load()
        if not isinstance(spec, AdapterSpec):
            raise TypeError(
                f"entry point {ep.name!r} in group {ENTRY_POINT_GROUP!r} gives a "
                f"{type(spec).__name__}, not an AdapterSpec"
            )
        register_adapter(spec)


def register_adapter(spec: AdapterSpec, *, replace: bool = False) -> AdapterSpec:
    """Register ``spec`` under each of its architecture names.

    Raises ``ValueError`` if a name is already taken, unless ``replace=True``.
    """
    for arch in spec.architectures:
        taken = arch in _registered or arch in _BUILTIN
        if taken and not replace:
            raise ValueError(
                f"an adapter for {arch!r} is already registered; pass replace=True to override it"
            )
    for arch in spec.architectures:
        _registered[arch] = spec
        _BUILTIN.pop(arch, None)
    return spec


def unregister_adapter(architecture: str) -> None:
    """Remove a registered (non built-in) adapter; a no-op for unknown names."""
    _registered.pop(architecture, None)


def supported_architectures() -> list[str]:
    """Every architecture name with an adapter, sorted."""
    _load_entry_points()
    return sorted({*_BUILTIN, *_registered})


def get_adapter(architecture: str) -> AdapterSpec:
    """The spec for an HF architecture name such as ``"OlmoeForCausalLM"``."""
    _load_entry_points()
    if architecture in _registered:
        return _registered[architecture]
    if architecture in _BUILTIN:
        spec = _import_target(_BUILTIN[architecture])
        _registered[architecture] = spec
        return spec
    known = supported_architectures()
    close = difflib.get_close_matches(architecture, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UnsupportedArchitectureError(
        f"no adapter for architecture {architecture!r}{hint}; supported: {', '.join(known)}; "
        + ADD_ADAPTER_HINT
    )


def list_adapters() -> list[tuple[str, AdapterSpec]]:
    """``(architecture, spec)`` pairs for every known family, sorted by name."""
    return [(arch, get_adapter(arch)) for arch in supported_architectures()]


__all__ = [
    "ENTRY_POINT_GROUP",
    "get_adapter",
    "list_adapters",
    "register_adapter",
    "supported_architectures",
    "unregister_adapter",
]
