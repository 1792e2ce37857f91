"""Capture pass and neuron-level Gated-LPI on the routers of issue 24, against a plain forward.

Each family gets a random-weight model whose MoE layers are shaped like its smallest
released model's (expert count, top-k, groups, shared experts, dense/MoE schedule, the
same router) at a reduced width (d_model 256, expert width 128, 4 layers, vocab 32,768),
so CPU runs take seconds. In the same run, on the same model and batch of left-padded
prompts: a plain HF forward (``model.hf_logits``); the same forward asked for logits at
the captured positions only (as the capture asks them, so the difference is the
capture's own work); one capture at the last token (the pass every operation runs); and
exact neuron-level Gated-LPI (``attribute(level="neuron")``). The forwards and the
capture take turns ``--repeats`` times (so a busy machine's load falls on all alike);
the table gives each one's fastest run in CPU time of this process (what the work costs,
little affected by other jobs on a shared machine) and the ratio of the fastest wall
times beside it.

    python benchmarks/bench_families.py [--repeats 9] [--prompts 16] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import transformers as tf

import mechmoe
from mechmoe.model import Model
from mechmoe.ops.attribution import attribute
from mechmoe.testing import DEFAULT_PROMPTS, tiny_tokenizer
from mechmoe.zoo.tiny import random_weights

WIDTH: dict[str, Any] = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=32768,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)

#: family -> (config class, the smallest release's MoE layout, which release)
SHAPES: dict[str, tuple[str, dict[str, Any], str]] = {
    "deepseek_v3": (
        "DeepseekV3Config",
        dict(
            n_routed_experts=256,
            num_experts_per_tok=8,
            n_group=8,
            topk_group=4,
            n_shared_experts=1,
            first_k_dense_replace=1,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            intermediate_size=512,
            moe_intermediate_size=128,
            q_lora_rank=None,
            kv_lora_rank=64,
            qk_rope_head_dim=16,
            qk_nope_head_dim=32,
            v_head_dim=32,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        "DeepSeek-V3: 256 experts, top-8, 8 groups keep 4, 1 shared, 3 dense layers",
    ),
    "glm4_moe": (
        "Glm4MoeConfig",
        dict(
            n_routed_experts=128,
            num_experts_per_tok=8,
            n_group=1,
            topk_group=1,
            n_shared_experts=1,
            first_k_dense_replace=1,
            routed_scaling_factor=1.0,
            norm_topk_prob=True,
            intermediate_size=512,
            moe_intermediate_size=128,
            head_dim=64,
        ),
        "GLM-4.5-Air: 128 experts, top-8, 1 shared, 1 dense layer",
    ),
    "gpt_oss": (
        "GptOssConfig",
        dict(
            num_local_experts=32,
            num_experts_per_tok=4,
            intermediate_size=128,
            head_dim=64,
            layer_types=["sliding_attention", "full_attention"] * 2,
            rope_parameters={"rope_type": "default", "rope_theta": 150000.0},
        ),
        "gpt-oss-20b: 32 experts, top-4",
    ),
    "llama4": (
        "Llama4TextConfig",
        dict(
            num_local_experts=16,
            num_experts_per_tok=1,
            intermediate_size=128,
            intermediate_size_mlp=512,
            interleave_moe_layer_step=1,
            head_dim=64,
        ),
        "Llama-4-Scout: 16 experts, top-1, 1 shared, every layer MoE",
    ),
    "granitemoe": (
        "GraniteMoeConfig",
        dict(
            num_local_experts=32,
            num_experts_per_tok=8,
            intermediate_size=128,
            residual_multiplier=0.22,
            logits_scaling=6.0,
        ),
        "granite-3.0-1b-a400m: 32 experts, top-8",
    ),
    "granitemoeshared": (
        "GraniteMoeSharedConfig",
        dict(
            num_local_experts=32,
            num_experts_per_tok=8,
            intermediate_size=128,
            shared_intermediate_size=256,
            residual_multiplier=0.22,
            logits_scaling=6.0,
        ),
        "Granite-MoE-Shared: 32 experts, top-8, a shared MLP",
    ),
    "jamba": (
        "JambaConfig",
        dict(
            num_experts=16,
            num_experts_per_tok=2,
            intermediate_size=128,
            attn_layer_period=4,
            attn_layer_offset=2,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=16,
        ),
        "Jamba-Mini: 16 experts, top-2, MoE every 2nd layer, attention every 8th (4th here)",
    ),
    "phimoe": (
        "PhimoeConfig",
        dict(num_local_experts=16, num_experts_per_tok=2, intermediate_size=128),
        "Phi-3.5-MoE: 16 experts, SparseMixer top-2",
    ),
    "deepseek_v2": (
        "DeepseekV2Config",
        dict(
            n_routed_experts=64,
            num_experts_per_tok=6,
            topk_method="greedy",
            n_shared_experts=2,
            first_k_dense_replace=1,
            routed_scaling_factor=1.0,
            intermediate_size=512,
            moe_intermediate_size=128,
            q_lora_rank=None,
            kv_lora_rank=64,
            qk_rope_head_dim=16,
            qk_nope_head_dim=32,
            v_head_dim=32,
        ),
        "DeepSeek-V2-Lite: 64 experts, top-6 (greedy), 2 shared, 1 dense layer",
    ),
    "glm4_moe_lite": (
        "Glm4MoeLiteConfig",
        dict(
            n_routed_experts=64,
            num_experts_per_tok=4,
            n_shared_experts=1,
            mlp_layer_types=["dense", "sparse", "sparse", "sparse"],
            routed_scaling_factor=1.8,
            norm_topk_prob=True,
            intermediate_size=512,
            moe_intermediate_size=128,
            q_lora_rank=64,
            kv_lora_rank=64,
            qk_rope_head_dim=16,
            qk_nope_head_dim=32,
            v_head_dim=32,
        ),
        "GLM-4-MoE-Lite (the config's defaults): 64 experts, top-4, 1 shared, 1 dense layer",
    ),
    "dots1": (
        "Dots1Config",
        dict(
            n_routed_experts=128,
            num_experts_per_tok=6,
            n_shared_experts=2,
            first_k_dense_replace=1,
            norm_topk_prob=True,
            intermediate_size=512,
            moe_intermediate_size=128,
            head_dim=64,
        ),
        "dots.llm1: 128 experts, top-6, 2 shared, 1 dense layer",
    ),
    "ernie4_5_moe": (
        "Ernie4_5_MoeConfig",
        dict(
            moe_num_experts=64,
            moe_k=6,
            moe_num_shared_experts=2,
            moe_layer_start_index=1,
            intermediate_size=512,
            moe_intermediate_size=128,
            head_dim=64,
        ),
        "ERNIE-4.5-21B-A3B: 64 experts, top-6, 2 shared, 1 dense layer",
    ),
    "minimax_m2": (
        "MiniMaxM2Config",
        dict(num_local_experts=256, num_experts_per_tok=8, intermediate_size=128, head_dim=64),
        "MiniMax-M2: 256 experts, top-8, every layer MoE",
    ),
    "hunyuan_v1_moe": (
        "HunYuanMoEV1Config",
        dict(num_experts=64, moe_topk=8, intermediate_size=128, head_dim=64, use_qk_norm=True),
        "Hunyuan-A13B: 64 experts, top-8, a shared MLP, every layer MoE",
    ),
    "flex_olmo": (
        "FlexOlmoConfig",
        dict(num_experts=7, num_experts_per_tok=7, intermediate_size=128),
        "FlexOlmo-7x7B: 7 experts, all 7 per token",
    ),
    "afmoe": (
        "AfmoeConfig",
        dict(
            num_experts=128,
            num_experts_per_tok=8,
            num_shared_experts=1,
            num_dense_layers=2,
            route_scale=2.8,
            intermediate_size=512,
            moe_intermediate_size=128,
            head_dim=64,
        ),
        "AFMoE (Trinity): 128 experts, top-8, 1 shared, 2 dense layers",
    ),
    "exaone_moe": (
        "ExaoneMoeConfig",
        dict(
            num_experts=128,
            num_experts_per_tok=8,
            num_shared_experts=1,
            mlp_layer_types=["dense", "sparse", "sparse", "sparse"],
            intermediate_size=512,
            moe_intermediate_size=128,
            head_dim=64,
        ),
        "EXAONE-MoE: 128 experts, top-8, 1 shared, 1 dense layer",
    ),
    "lfm2_moe": (
        "Lfm2MoeConfig",
        dict(
            num_experts=32,
            num_experts_per_tok=4,
            num_dense_layers=2,
            intermediate_size=512,
            moe_intermediate_size=128,
            layer_types=["conv", "full_attention", "conv", "full_attention"],
        ),
        "LFM2-8B-A1B: 32 experts, top-4, 2 dense layers, short-conv/attention hybrid",
    ),
    "granitemoehybrid": (
        "GraniteMoeHybridConfig",
        dict(
            num_local_experts=64,
            num_experts_per_tok=6,
            intermediate_size=128,
            shared_intermediate_size=256,
            residual_multiplier=0.22,
            logits_scaling=6.0,
            layer_types=["linear_attention"] * 3 + ["full_attention"],
            mamba_n_heads=8,
            mamba_d_state=16,
            position_embedding_type="rope",
        ),
        "granite-4.0-h-tiny: 64 experts, top-6, a shared MLP, Mamba-2 hybrid",
    ),
}


def build(family: str, experts_implementation: str) -> Model:
    cls, shape, _ = SHAPES[family]
    cfg = getattr(tf, cls)(**{**WIDTH, **shape})
    cfg._experts_implementation = experts_implementation
    torch.manual_seed(0)
    hf = random_weights(tf.AutoModelForCausalLM.from_config(cfg), seed=0)
    return mechmoe.load(hf, tokenizer=tiny_tokenizer())


def _interleaved(fns: dict[str, Any], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Each function timed ``repeats`` times, taking turns, after one warm-up each, in wall
    time and in this process's CPU time. On a shared machine load changes between runs:
    turns expose every function to it alike, and CPU time barely feels it."""
    for fn in fns.values():
        fn()
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name]["cpu"].append(time.process_time() - c0)
            times[name]["wall"].append(time.perf_counter() - w0)
    return times


def bench(family: str, repeats: int, n_prompts: int, impl: str) -> dict[str, Any] | None:
    try:
        model = build(family, impl)
    except ValueError as err:  # Llama-4 runs its experts with bmm only
        print(f"{family:<17} {impl:<10} skipped: {err}")
        return None
    prompts = [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] + f" {i}" for i in range(n_prompts)]
    batch = model.tokenize(prompts)
    keep = torch.unique(batch.positions)

    def plain_last() -> Any:  # the forward, its logits only where the capture keeps them
        return model.hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=keep,
        ).logits

    with torch.no_grad():
        t = _interleaved(
            {
                "plain": lambda: model.hf_logits(batch),
                "plain_last": plain_last,
                "capture": lambda: model.capture(batch),
            },
            repeats,
        )
    lpi = _interleaved({"lpi": lambda: attribute(model, prompts, level="neuron")}, 2)["lpi"]
    d = model.dims
    plain, last, capture = t["plain"], t["plain_last"], t["capture"]
    return {
        "family": family,
        "release": SHAPES[family][2],
        "experts_implementation": impl,
        "experts": max(d.n_experts),
        "top_k": max(d.top_k),
        "layer_kinds": "".join(k[0] for k in d.layer_kinds),
        "plain_cpu_s": min(plain["cpu"]),
        "capture_cpu_s": min(capture["cpu"]),
        "capture_ratio_cpu": min(capture["cpu"]) / min(plain["cpu"]),
        "plain_last_cpu_s": min(last["cpu"]),
        "capture_ratio_last_cpu": min(capture["cpu"]) / min(last["cpu"]),
        "plain_wall_s": min(plain["wall"]),
        "capture_wall_s": min(capture["wall"]),
        "capture_ratio_wall": min(capture["wall"]) / min(plain["wall"]),
        "gated_lpi_cpu_s": min(lpi["cpu"]),
        "gated_lpi_ratio_cpu": min(lpi["cpu"]) / min(plain["cpu"]),
        "times": {"plain": plain, "plain_last": last, "capture": capture, "lpi": lpi},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--families", nargs="*", default=list(SHAPES))
    ap.add_argument("--impl", nargs="*", default=["eager", "grouped_mm"])
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: CPU time is the work done)"
    )
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    print(
        f"threads={torch.get_num_threads()} prompts={args.prompts} repeats={args.repeats} "
        "(fastest); width d_model 256, expert width 128, 4 layers, vocab 32,768"
    )
    header = (
        f"{'family':<17} {'impl':<10} {'E/k':>7} {'plain':>9} {'capture':>9} {'ratio':>6} "
        f"{'wall ratio':>10} {'plain@last':>10} {'ratio':>6} {'Gated-LPI':>10} {'ratio':>6}"
    )
    print(
        "CPU time of this process (fastest run); wall-time ratio beside it; plain@last: the "
        "forward with logits at the captured positions only"
    )
    print(header)
    rows = []
    for family in args.families:
        for impl in args.impl:
            r = bench(family, args.repeats, args.prompts, impl)
            if r is None:
                continue
            rows.append(r)
            print(
                f"{family:<17} {impl:<10} {r['experts']:>4}/{r['top_k']:<2} "
                f"{r['plain_cpu_s'] * 1e3:>7.1f}ms {r['capture_cpu_s'] * 1e3:>7.1f}ms "
                f"{r['capture_ratio_cpu']:>5.2f}× {r['capture_ratio_wall']:>9.2f}× "
                f"{r['plain_last_cpu_s'] * 1e3:>8.1f}ms {r['capture_ratio_last_cpu']:>5.2f}× "
                f"{r['gated_lpi_cpu_s']:>9.2f}s {r['gated_lpi_ratio_cpu']:>5.0f}×",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"rows": rows, "threads": torch.get_num_threads(), "prompts": args.prompts},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
