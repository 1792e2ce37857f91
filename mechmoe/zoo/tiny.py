"""Tiny random-weight models of every supported family: the zoo's named source ``tiny:``.

Each family is one row of :data:`_CONFIGS` (its transformers config class and sizes);
``mechmoe.load("tiny:olmoe")`` builds one in a fraction of a second, with no download.
Weights are seeded and deliberately larger than HF's init, so identities that forget a
norm scale or a gate fail loudly. The tokenizer is a small BPE trained in-process.

Examples
--------
>>> from mechmoe.zoo.tiny import tiny_model
>>> model = tiny_model("olmoe")
>>> model.dims.n_layers, model.dims.n_experts[0], model.dims.top_k[0]
(2, 8, 2)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechmoe.core.errors import InvalidInputError
from mechmoe.zoo.tokenizers import train_bpe

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from mechmoe.model import Model

#: The tokenizer's training text: a few relational sentences.
CORPUS: tuple[str, ...] = (
    "The capital of France is Paris.",
    "The capital of Japan is Tokyo.",
    "The capital of Italy is Rome.",
    "The capital of Germany is Berlin.",
    "Paris is a city in France. Tokyo is a city in Japan.",
    "The opposite of hot is cold. The opposite of big is small.",
    "The first letter of apple is a. The plural of mouse is mice.",
    "Experts route tokens; neurons store facts; heads move information.",
    "A mixture of experts chooses a few experts for every token.",
)

_COMMON: dict[str, Any] = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)
_MOE: dict[str, Any] = dict(_COMMON, num_experts_per_tok=2)

#: family -> (transformers config class, its arguments besides ``vocab_size``).
#: Adding a family to the zoo is one row here (its adapter is one spec in mechmoe.adapters).
_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "olmoe": ("OlmoeConfig", dict(_MOE, num_experts=8)),
    "mixtral": ("MixtralConfig", dict(_MOE, num_local_experts=4)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(
            _MOE,
            num_hidden_layers=3,
            num_experts=6,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            mlp_only_layers=[1],
            norm_topk_prob=False,
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(_MOE, num_experts=6, moe_intermediate_size=24, norm_topk_prob=True, head_dim=16),
    ),
    "olmo": ("OlmoConfig", _COMMON),
    "olmo2": ("Olmo2Config", _COMMON),
    "llama": ("LlamaConfig", _COMMON),
    "qwen2": ("Qwen2Config", _COMMON),
    # The routers of issue 24: odd expert counts, groups, selection biases (drawn in
    # tiny_hf_model), dense first layers, hybrids, scaled residuals.
    "deepseek_v3": (
        "DeepseekV3Config",
        dict(
            _MOE,
            num_hidden_layers=3,
            num_experts_per_tok=3,
            num_key_value_heads=4,  # latent attention expands keys per head
            n_routed_experts=15,
            n_group=5,
            topk_group=2,
            first_k_dense_replace=1,
            moe_intermediate_size=24,
            n_shared_experts=1,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            q_lora_rank=None,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=12,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
    ),
    "glm4_moe": (
        "Glm4MoeConfig",
        dict(
            _MOE,
            num_hidden_layers=3,
            num_experts_per_tok=3,
            n_routed_experts=12,
            n_group=4,
            topk_group=2,
            first_k_dense_replace=1,
            moe_intermediate_size=24,
            n_shared_experts=1,
            norm_topk_prob=False,
            routed_scaling_factor=1.5,
            head_dim=16,
        ),
    ),
    "gpt_oss": (
        "GptOssConfig",
        dict(
            _MOE,
            num_local_experts=5,
            intermediate_size=24,
            head_dim=16,
            swiglu_limit=1.0,  # small enough that the clamps bite on tiny activations
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 150000.0},
        ),
    ),
    "llama4": (
        "Llama4TextConfig",
        dict(
            _MOE,
            num_hidden_layers=3,
            num_local_experts=5,
            intermediate_size=24,
            intermediate_size_mlp=40,
            interleave_moe_layer_step=2,
            head_dim=16,
        ),
    ),
    "granitemoe": (
        "GraniteMoeConfig",
        dict(
            _MOE,
            num_local_experts=5,
            intermediate_size=24,
            residual_multiplier=0.7,
            embedding_multiplier=3.0,
            logits_scaling=3.0,
            attention_multiplier=0.2,
        ),
    ),
    "granitemoeshared": (
        "GraniteMoeSharedConfig",
        dict(
            _MOE,
            num_local_experts=5,
            intermediate_size=24,
            shared_intermediate_size=20,
            residual_multiplier=0.7,
            embedding_multiplier=3.0,
            logits_scaling=3.0,
        ),
    ),
    "jamba": (
        "JambaConfig",
        dict(
            _MOE,
            num_hidden_layers=4,
            num_experts=5,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=0,
            mamba_d_state=8,
            mamba_dt_rank=8,
        ),
    ),
    "phimoe": (
        "PhimoeConfig",
        dict(
            _MOE,
            num_local_experts=5,
            router_jitter_noise=0.3,  # a band wide enough to keep several experts
            attention_bias=True,
            lm_head_bias=True,
        ),
    ),
    "deepseek_v2": (
        "DeepseekV2Config",
        dict(
            _MOE,
            num_hidden_layers=3,
            num_key_value_heads=4,
            n_routed_experts=9,
            n_group=3,
            topk_group=2,
            topk_method="group_limited_greedy",
            routed_scaling_factor=1.7,
            n_shared_experts=1,
            first_k_dense_replace=1,
            moe_intermediate_size=24,
            q_lora_rank=None,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=12,
        ),
    ),
    "glm4_moe_lite": (
        "Glm4MoeLiteConfig",
        dict(
            _MOE,
            num_hidden_layers=3,
            num_experts_per_tok=3,
            num_key_value_heads=4,
            n_routed_experts=10,
            n_group=2,
            topk_group=1,
            mlp_layer_types=["dense", "sparse", "sparse"],
            moe_intermediate_size=24,
            n_shared_experts=1,
            norm_topk_prob=True,
            routed_scaling_factor=1.8,
            q_lora_rank=24,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=12,
        ),
    ),
    "dots1": (
        "Dots1Config",
        dict(
            _MOE,
            num_hidden_layers=3,
            num_experts_per_tok=3,
            n_routed_experts=14,
            n_group=7,
            topk_group=3,
            first_k_dense_replace=1,
            moe_intermediate_size=24,
            n_shared_experts=2,
            norm_topk_prob=True,
            routed_scaling_factor=2.0,
            head_dim=16,
            sliding_window=None,
        ),
    ),
    "ernie4_5_moe": (
        "Ernie4_5_MoeConfig",
        dict(
            _MOE,
            num_hidden_layers=4,
            moe_num_experts=7,
            moe_k=2,
            moe_intermediate_size=24,
            moe_num_shared_experts=1,
            moe_layer_start_index=1,
            moe_layer_end_index=3,
            moe_layer_interval=2,
            moe_norm_min=0.45,  # above some tokens' top-2 mass, so the clamp bites
            head_dim=16,
        ),
    ),
    "minimax_m2": (
        "MiniMaxM2Config",
        dict(_MOE, num_local_experts=7, num_experts_per_tok=3, head_dim=16),
    ),
    "hunyuan_v1_moe": (
        "HunYuanMoEV1Config",
        dict(_COMMON, num_experts=5, moe_topk=[2, 3], head_dim=16, use_qk_norm=True),
    ),
    "flex_olmo": (
        "FlexOlmoConfig",
        dict(_MOE, num_experts=7, num_experts_per_tok=3, norm_topk_prob=True),
    ),
    "afmoe": (
        "AfmoeConfig",
        dict(
            _MOE,
            num_hidden_layers=3,
            num_experts=7,
            num_experts_per_tok=3,
            num_dense_layers=1,
            num_shared_experts=1,
            moe_intermediate_size=24,
            route_scale=2.5,
            head_dim=16,
        ),
    ),
    "exaone_moe": (
        "ExaoneMoeConfig",
        dict(
            _MOE,
            num_hidden_layers=4,
            num_experts=12,
            num_experts_per_tok=3,
            n_group=3,
            topk_group=2,
            mlp_layer_types=["dense", "sparse", "dense", "sparse"],
            moe_intermediate_size=24,
            num_shared_experts=1,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            head_dim=16,
            sliding_window_pattern=2,  # sliding and full attention layers alternate
        ),
    ),
    "lfm2_moe": (
        "Lfm2MoeConfig",
        dict(
            _MOE,
            num_hidden_layers=4,
            num_experts=7,
            num_experts_per_tok=3,
            num_dense_layers=1,
            moe_intermediate_size=24,
            routed_scaling_factor=1.5,
            norm_topk_prob=True,
            layer_types=["conv", "full_attention", "conv", "full_attention"],
        ),
    ),
    "granitemoehybrid": (
        "GraniteMoeHybridConfig",
        dict(
            _MOE,
            num_hidden_layers=4,
            num_local_experts=5,
            intermediate_size=24,
            shared_intermediate_size=20,
            residual_multiplier=0.7,
            embedding_multiplier=3.0,
            logits_scaling=3.0,
            layer_types=["linear_attention", "full_attention"] * 2,
            mamba_n_heads=8,
            mamba_d_head=16,
            mamba_d_state=8,
            mamba_n_groups=1,
            mamba_expand=2,
            position_embedding_type="rope",
        ),
    ),
    "gpt2": (
        "GPT2Config",
        dict(
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=128,
            n_inner=48,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
    ),
}

TINY_FAMILIES: tuple[str, ...] = tuple(_CONFIGS)
MOE_FAMILIES: tuple[str, ...] = tuple(
    f for f, (_, kw) in _CONFIGS.items() if {"num_experts_per_tok", "moe_topk"} & set(kw)
)


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on :data:`CORPUS` (pad=0, bos=1, eos=2)."""
    return train_bpe(list(CORPUS) * 4, vocab_size)


def _check_family(family: str) -> None:
    if family not in _CONFIGS:
        raise InvalidInputError(
            f"no tiny model {family!r}; choose one of {', '.join(TINY_FAMILIES)}"
        )


def _config(family: str, vocab: int) -> Any:
    import transformers as tf

    _check_family(family)
    cls, kwargs = _CONFIGS[family]
    return getattr(tf, cls)(vocab_size=vocab, **kwargs)


def tiny_config(family: str) -> Any:
    """The transformers config of the tiny ``family`` (no weights are built)."""
    return _config(family, len(tiny_tokenizer()))


def tiny_hf_model(family: str, *, seed: int = 0) -> PreTrainedModel:
    """A tiny random-weight HF model of ``family`` in fp32 eval mode.

    Weights are redrawn with a larger scale than HF's init (and norm scales away from
    one), so identities that ignore a γ or a gate fail loudly instead of by 1e-9.
    """
    import torch
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    config = _config(family, len(tok))
    config._experts_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return random_weights(model, seed=seed)


def random_weights(model: PreTrainedModel, *, seed: int = 0) -> PreTrainedModel:
    """Redraw ``model``'s weights as the tiny zoo does (in place; returned in eval mode).

    Weights ``N(0, 1/fan_in)``, norm scales ``1 + N(0, 0.04)``, biases ``N(0, 0.0025)``, a
    router's selection bias (buffer or parameter) ``N(0, 0.04)``; Mamba's decay and skip keep HF's init.
    Any HF model can be drawn this way, e.g. a tiny config of a family mechmoe does not
    ship, to test a spec written for it.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name or "ln_" in name:
                p.copy_(1.0 + 0.2 * noise) if name.endswith("weight") else p.copy_(0.1 * noise)
            elif name.endswith(("correction_bias", "expert_bias")):  # a selection-bias parameter
                p.copy_(0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            elif name.endswith(("A_log", ".D")):  # Mamba's state decay and skip: keep HF's
                continue
            else:
                fan_in = p.shape[-1] if p.ndim >= 2 else 1
                p.copy_(noise / fan_in**0.5)
        for name, b in model.named_buffers():
            # a router's selection bias (DeepSeek-V3's e_score_correction_bias) is a buffer:
            # drawn too, so the biased choice differs from the unbiased one
            if name.endswith("_bias") and b.is_floating_point():
                b.copy_(0.2 * torch.randn(b.shape, generator=gen))
    return model.eval()


def tiny_model(family: str, *, seed: int = 0) -> Model:
    """A :class:`mechmoe.Model` wrapping :func:`tiny_hf_model` and :func:`tiny_tokenizer`."""
    from mechmoe.model import Model

    return Model.from_hf(tiny_hf_model(family, seed=seed), tiny_tokenizer(), name=f"tiny:{family}")


def random_olmoe(
    *,
    vocab_size: int = 50304,
    hidden_size: int = 256,
    num_layers: int = 16,
    num_experts: int = 64,
    top_k: int = 8,
    intermediate_size: int = 128,
    num_heads: int = 4,
    seed: int = 0,
    name: str = "random-olmoe-shaped",
) -> Model:
    """A random-weight OLMoE of a chosen size, for work that needs a real vocabulary.

    Weights are seeded ``N(0, 1/fan_in)`` and norm scales 1; the defaults are OLMoE's
    layout at a fraction of its width (the attribution benchmark's workload). The
    tokenizer is :func:`tiny_tokenizer`: token ids beyond its vocabulary exist in the
    model but are never produced by it.
    """
    import torch
    import transformers as tf

    from mechmoe.model import Model

    cfg = tf.OlmoeConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    cfg._experts_implementation = "eager"
    torch.manual_seed(seed)
    hf = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, prm in hf.named_parameters():
            if "norm" in pname:
                prm.fill_(1.0)
            else:
                prm.copy_(torch.randn(prm.shape, generator=gen) / prm.shape[-1] ** 0.5)
    return Model.from_hf(hf, tiny_tokenizer(), name=name)


def save_tiny(family: str, path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer as a local folder laid out like a hub repo."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tiny_hf_model(family, seed=seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def source(family: str) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The named source ``tiny:FAMILY`` (see :func:`mechmoe.model.sources.register_source`)."""
    _check_family(family)
    return tiny_hf_model(family), tiny_tokenizer()


__all__ = [
    "CORPUS",
    "MOE_FAMILIES",
    "TINY_FAMILIES",
    "random_olmoe",
    "random_weights",
    "save_tiny",
    "source",
    "tiny_config",
    "tiny_hf_model",
    "tiny_model",
    "tiny_tokenizer",
]
