"""The adapter registry, keyed by HF ``architectures`` names (a :class:`~mechmoe.core.registry.Registry`).

Built-in specs are ``"module:attr"`` strings imported on first use; third-party packages
add families through the ``mechmoe.adapters`` entry-point group (each entry point names
an :class:`AdapterSpec`, registered under the spec's ``architectures``) or by calling
:func:`register_adapter`.
"""

from __future__ import annotations

from mechmoe.adapters.spec import AdapterSpec
from mechmoe.core.checks import entry_point
from mechmoe.core.errors import UnsupportedArchitectureError
from mechmoe.core.registry import Registry, deprecated_alias

ENTRY_POINT_GROUP = "mechmoe.adapters"

ADD_ADAPTER_HINT = (
    "no adapter handles it: to add one, write an AdapterSpec (see docs/adapters.md) and call "
    "mechmoe.register_adapter(spec) or expose it in the 'mechmoe.adapters' entry-point group"
)

ADAPTERS: Registry[AdapterSpec] = Registry(
    "adapter",
    noun="architecture",
    group=ENTRY_POINT_GROUP,
    check=lambda obj: isinstance(obj, AdapterSpec),
    expected="an AdapterSpec",
    keys=lambda spec: spec.architectures,
    unknown=UnsupportedArchitectureError,
    how_to_add=ADD_ADAPTER_HINT,
    builtins={
        "GPT2LMHeadModel": "mechmoe.adapters.gpt2:SPEC",
        "LlamaForCausalLM": "mechmoe.adapters.llama:SPEC",
        "MixtralForCausalLM": "mechmoe.adapters.mixtral:SPEC",
        "Olmo2ForCausalLM": "mechmoe.adapters.olmo2:SPEC",
        "OlmoForCausalLM": "mechmoe.adapters.olmo:SPEC",
        "OlmoeForCausalLM": "mechmoe.adapters.olmoe:SPEC",
        "Qwen2ForCausalLM": "mechmoe.adapters.qwen2:SPEC",
        "Qwen2MoeForCausalLM": "mechmoe.adapters.qwen_moe:QWEN2_MOE",
        "Qwen3MoeForCausalLM": "mechmoe.adapters.qwen_moe:QWEN3_MOE",
    },
)


@entry_point
def register_adapter(spec: AdapterSpec, *, replace: bool = False) -> AdapterSpec:
    """Register ``spec`` under each of its architecture names.

    A name already known raises :class:`~mechmoe.core.errors.DuplicateNameError` (also a
    ``ValueError``) unless ``replace=True``; then nothing is registered.
    """
    ADAPTERS.register(None, spec, replace=replace)
    return spec


def unregister_adapter(architecture: str) -> None:
    """Forget a registered adapter (a built-in it replaced comes back); a no-op for
    names that were not registered."""
    ADAPTERS.unregister(architecture)


def list_adapters() -> list[str]:
    """Every architecture name with an adapter: built-ins, then others sorted.

    Installed entry points are imported to learn their architectures.
    """
    return ADAPTERS.names()


@entry_point
def get_adapter(architecture: str) -> AdapterSpec:
    """The spec for an HF architecture name such as ``"OlmoeForCausalLM"``."""
    return ADAPTERS.get(architecture)


supported_architectures = deprecated_alias(list_adapters, "supported_architectures")


__all__ = [
    "ADAPTERS",
    "ENTRY_POINT_GROUP",
    "get_adapter",
    "list_adapters",
    "register_adapter",
    "supported_architectures",
    "unregister_adapter",
]
