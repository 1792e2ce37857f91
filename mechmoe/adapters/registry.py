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
        "AfmoeForCausalLM": "mechmoe.adapters.afmoe:SPEC",
        "DeepseekV2ForCausalLM": "mechmoe.adapters.deepseek:DEEPSEEK_V2",
        "DeepseekV3ForCausalLM": "mechmoe.adapters.deepseek:DEEPSEEK_V3",
        "Dots1ForCausalLM": "mechmoe.adapters.deepseek:DOTS1",
        "Ernie4_5_MoeForCausalLM": "mechmoe.adapters.ernie:SPEC",
        "ExaoneMoeForCausalLM": "mechmoe.adapters.deepseek:EXAONE_MOE",
        "FlexOlmoForCausalLM": "mechmoe.adapters.flex_olmo:SPEC",
        "Glm4MoeForCausalLM": "mechmoe.adapters.deepseek:GLM4_MOE",
        "Glm4MoeLiteForCausalLM": "mechmoe.adapters.deepseek:GLM4_MOE_LITE",
        "GPT2LMHeadModel": "mechmoe.adapters.gpt2:SPEC",
        "GptOssForCausalLM": "mechmoe.adapters.gpt_oss:SPEC",
        "GraniteMoeForCausalLM": "mechmoe.adapters.granite:GRANITEMOE",
        "GraniteMoeHybridForCausalLM": "mechmoe.adapters.granite:GRANITEMOE_HYBRID",
        "GraniteMoeSharedForCausalLM": "mechmoe.adapters.granite:GRANITEMOE_SHARED",
        "HunYuanMoEV1ForCausalLM": "mechmoe.adapters.hunyuan:SPEC",
        "JambaForCausalLM": "mechmoe.adapters.jamba:SPEC",
        "Lfm2MoeForCausalLM": "mechmoe.adapters.lfm2_moe:SPEC",
        "Llama4ForCausalLM": "mechmoe.adapters.llama4:SPEC",
        "LlamaForCausalLM": "mechmoe.adapters.llama:SPEC",
        "MiniMaxM2ForCausalLM": "mechmoe.adapters.minimax:MINIMAX_M2",
        "MixtralForCausalLM": "mechmoe.adapters.mixtral:SPEC",
        "Olmo2ForCausalLM": "mechmoe.adapters.olmo2:SPEC",
        "OlmoeForCausalLM": "mechmoe.adapters.olmoe:SPEC",
        "OlmoForCausalLM": "mechmoe.adapters.olmo:SPEC",
        "PhimoeForCausalLM": "mechmoe.adapters.phimoe:SPEC",
        "Qwen2ForCausalLM": "mechmoe.adapters.qwen2:SPEC",
        "Qwen2MoeForCausalLM": "mechmoe.adapters.qwen_moe:QWEN2_MOE",
        "Qwen3MoeForCausalLM": "mechmoe.adapters.qwen_moe:QWEN3_MOE",
    },
)


#: Architectures whose layers the adapter description cannot state yet, and what is
#: missing; :func:`get_adapter` refuses them with that line (a registered spec for one of
#: them is used as any other). docs/adapters.md lists them.
NOT_EXPRESSIBLE: dict[str, str] = {
    "DbrxForCausalLM": "DBRX stores its experts flattened 2-D (E·I, d) and renormalises "
    "with a p-norm; the description has 3-D expert stacks and sum renormalisation",
    "JetMoeForCausalLM": "JetMoE routes attention too (mixture of attention heads); the "
    "description routes only the FFN",
    "Gemma4ForCausalLM": "Gemma-4 normalises after the expert mix and runs a dense MLP in "
    "parallel; the description adds the MoE output to the residual as it is",
    "LongcatFlashForCausalLM": "LongCat-Flash routes to identity (zero-compute) experts "
    "that return weight × x; the description has only GLU experts",
    "DeepseekV4ForCausalLM": "DeepSeek-V4's hash layers take experts from a token table "
    "and score with sqrt-softplus; the description has no hash router or that score",
    "SwitchTransformersForConditionalGeneration": "Switch drops tokens over expert "
    "capacity, and is encoder-decoder; the description has no capacity",
    "NllbMoeForConditionalGeneration": "NLLB-MoE drops tokens over expert capacity, and is "
    "encoder-decoder; the description has no capacity",
}


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
    """The spec for an HF architecture name such as ``"OlmoeForCausalLM"``.

    A family the description cannot state yet (:data:`NOT_EXPRESSIBLE`) is refused with
    one line saying what is missing.
    """
    if architecture in NOT_EXPRESSIBLE and architecture not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"no adapter for architecture {architecture!r}: {NOT_EXPRESSIBLE[architecture]}"
        )
    return ADAPTERS.get(architecture)


supported_architectures = deprecated_alias(list_adapters, "supported_architectures")


__all__ = [
    "ADAPTERS",
    "ENTRY_POINT_GROUP",
    "NOT_EXPRESSIBLE",
    "get_adapter",
    "list_adapters",
    "register_adapter",
    "supported_architectures",
    "unregister_adapter",
]
