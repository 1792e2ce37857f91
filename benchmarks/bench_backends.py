"""Each backend's capture overhead against a plain HF forward, measured in one run.

For every model, one handle per backend is loaded (the TransformerLens backend rebuilds
its handle's HF model around a bridge, so the plain forward is timed on the nnsight
handle's untouched model). Timings are medians over ``--repeats`` rounds; within a round
every variant runs once, in turn, so a change in machine load hits them alike. Ratios are
``time / plain HF forward`` of the same round set.

Variants: the plain HF forward; for TransformerLens also the bridged model's own forward
without hooks (the price of the bridge itself); then ``model.capture`` at the last
position and at every position, per backend.

    python benchmarks/bench_backends.py [--repeats 7] [--prompts 16] [--threads N] [--no-smollm2]
        [--models tiny:olmoe,smollm2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import mechmoe
from mechmoe.testing import DEFAULT_PROMPTS, smollm2_gguf

BACKENDS = ("nnsight", "transformerlens")


def _rounds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up (and the lazy bridge/envoy construction)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(name: str, repeats: int, n_prompts: int) -> dict[str, float]:
    models = {b: mechmoe.load(name, backend=b) for b in BACKENDS}
    ref = models["nnsight"]
    prompts = [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] + f" {i}" for i in range(n_prompts)]
    last = ref.tokenize(prompts)
    every = ref.tokenize(prompts, positions="all")
    fns: dict[str, Callable[[], object]] = {"plain": lambda: ref.hf_logits(last)}
    bridge = models["transformerlens"].backend_impl.bridge
    fns["bridge_forward"] = lambda: bridge(
        last.input_ids,
        attention_mask=last.attention_mask,
        position_ids=last.position_ids,
        use_cache=False,
    )
    for b, m in models.items():
        fns[f"{b}_last"] = lambda m=m: m.capture(last)
        fns[f"{b}_all"] = lambda m=m: m.capture(every)
    return _rounds(fns, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-smollm2", action="store_true", help="tiny models only")
    ap.add_argument("--models", default=None, help="comma-separated model names (default: all)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    names = ["tiny:olmoe", "tiny:qwen2_moe", "tiny:llama"]
    if smollm2_gguf() is not None and not args.no_smollm2:
        names.append("smollm2")
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    print(
        f"threads={torch.get_num_threads()} prompts={args.prompts} repeats={args.repeats} "
        "(median; ratio = time / plain HF forward)"
    )
    cols = ["bridge_forward"] + [f"{b}_{p}" for b in BACKENDS for p in ("last", "all")]
    print(f"{'model':<15} {'plain':>9} " + " ".join(f"{c:>22}" for c in cols))
    for name in names:
        r = bench(name, args.repeats, args.prompts)
        cells = [f"{r[c] * 1e3:9.1f}ms {r[c] / r['plain']:5.2f}x" for c in cols]
        print(f"{name:<15} {r['plain'] * 1e3:7.1f}ms " + " ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
