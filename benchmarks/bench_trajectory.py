"""Trajectory sweep: checkpoints per minute by executor, and peak memory vs checkpoints.

1. Throughput: the same sweep (tiny OLMoE checkpoints; ``param_norm`` + ``hit`` on a
   probe subset) with the local executor, and with a Dask LocalCluster of 1 and 2
   worker processes. Each run is a fresh subprocess; the time is that of the ``sweep()``
   call, cluster start-up included. Ratios are against the local executor in this run.
2. Memory: peak RSS of a local sweep over 2, 4 and 8 checkpoints of a larger OLMoE
   (4 layers, d 256, 8 experts of 512: 14M parameters, 56 MB in fp32, so a model kept
   per checkpoint would add ~56 MB each), each sweep in its own subprocess (``os.wait4``
   rusage of that child). One model is in memory at a time, so the peak must not grow
   with the number of checkpoints.
3. Integrity: the local sweep with every part checksummed (crc32c codec, per-part
   manifest, verification before the sweep) and the plain-xarray root kept up to date,
   against the same sweep with all of that switched off (``MECHMOE_BENCH_PLAIN_STORE=1``),
   alternating the two in one process after a warm-up sweep; measures ``param_norm``,
   ``hit``, ``neuron_lpi`` and ``routing`` (the store's largest variables). Wall and CPU
   time per pair, the store's own time inside the same sweeps, and a resume of each
   finished store (nothing left to compute: verification and bookkeeping).

    python benchmarks/bench_trajectory.py [--checkpoints 8] [--family olmoe] [--items 8]

Writes ``benchmarks/results_trajectory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, time
from mechmoe.probes import load_probe
from mechmoe.trajectory import LocalCheckpoints, sweep
from mechmoe.trajectory.sweep import ParameterNorm
from transformers.utils import logging as hf_logging
hf_logging.disable_progress_bar()
import mechmoe.trajectory.store as store_mod
spent = {"write": 0.0, "verify": 0.0, "root": 0.0}
def timed(fn, key):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - t
    return wrapper
# the store's own time: writing parts (root update included), verifying, the root alone
for name, key in (("write", "write"), ("verify", "verify"), ("sync_root", "root")):
    setattr(store_mod.TrajectoryStore, name, timed(getattr(store_mod.TrajectoryStore, name), key))
ckpts, out, executor, workers, select, items, names = sys.argv[1:8]
probe = load_probe("country_capital_city").head(int(items))
measures = [ParameterNorm() if n == "param_norm" else n for n in names.split(",")]
t0 = time.perf_counter()
s = sweep(LocalCheckpoints(ckpts, select=select), probe=probe, measures=measures,
          out=out, executor=executor, workers=int(workers))
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "done": len(s.done), "failed": len(s.failed), "store": spent}))
"""


def _medium_olmoe():
    import torch
    from transformers import AutoModelForCausalLM, OlmoeConfig

    from mechmoe.testing import tiny_tokenizer

    config = OlmoeConfig(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=512,
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def build(root: Path, n: int, family: str, *, medium: bool = False) -> Path:
    import torch

    from mechmoe.testing import tiny_hf_model, tiny_tokenizer

    folder = root / ("medium" if medium else "ckpts")
    for i in range(n):
        step = 1000 * (i + 1)
        model = _medium_olmoe() if medium else tiny_hf_model(family, seed=0)
        gen = torch.Generator().manual_seed(step)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * (i + 1) * torch.randn(p.shape, generator=gen) * p.std())
        model.save_pretrained(folder / f"step{step}")
        tiny_tokenizer().save_pretrained(folder / f"step{step}")
    return folder


MEASURES = "param_norm,hit"
#: The integrity comparison writes the store's largest variables too.
INTEGRITY_MEASURES = "param_norm,hit,neuron_lpi,routing"


def run_child(
    ckpts: Path,
    out: Path,
    executor: str,
    workers: int,
    select: str,
    items: int,
    measures: str = MEASURES,
    plain: bool = False,
):
    from mechmoe.trajectory.store import PLAIN_ENV

    env = {k: v for k, v in os.environ.items() if k != PLAIN_ENV}
    if plain:
        env[PLAIN_ENV] = "1"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(ckpts),
            str(out),
            executor,
            str(workers),
            select,
            str(items),
            measures,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    output = proc.stdout.read()
    proc.stdout.close()
    if status != 0:
        raise RuntimeError(f"child failed ({status}): {output}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoints", type=int, default=8)
    ap.add_argument("--family", default="olmoe")
    ap.add_argument("--items", type=int, default=8, help="probe items (country_capital_city)")
    ap.add_argument("--repeats", type=int, default=8, help="pairs of the integrity comparison")
    ap.add_argument("--only", choices=("all", "integrity"), default="all")
    args = ap.parse_args()
    info = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "family": args.family,
        "probe_items": args.items,
        "measures": ["param_norm", "hit"],
        "loadavg_start": list(os.getloadavg()),
    }
    path = HERE / "results_trajectory.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpts = build(root, args.checkpoints, args.family)
        results["integrity"] = integrity(root / "tiny-run", ckpts, args)
        # the same on checkpoints closer to the demo's zoo (and still miniature)
        medium = build(root, args.checkpoints, "olmoe", medium=True)
        results["integrity_medium"] = integrity(root / "medium-run", medium, args)
        if args.only == "integrity":
            results["when_integrity"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {path}")
            return
        throughput = []
        for executor, workers in (("local", 1), ("dask", 1), ("dask", 2)):
            r = run_child(
                ckpts, root / f"t-{executor}-{workers}.zarr", executor, workers, "all", args.items
            )
            r.update(executor=executor, workers=workers, checkpoints=args.checkpoints)
            r["per_minute"] = 60.0 * r["done"] / r["seconds"]
            throughput.append(r)
            print(
                f"{executor:>5} x{workers}: {r['per_minute']:.1f} checkpoints/min "
                f"({r['seconds']:.1f} s for {r['done']})",
                flush=True,
            )
        base = throughput[0]["per_minute"]
        for r in throughput:
            r["ratio_vs_local"] = r["per_minute"] / base
        memory = []
        info["memory_model"] = "OLMoE 4 layers, d 256, 8 experts x 512 (14M params)"
        for n in (2, 4, 8):
            r = run_child(medium, root / f"m-{n}.zarr", "local", 1, f"first:{n}", args.items)
            r.update(checkpoints=n)
            memory.append(r)
            print(f"local, {n} checkpoints: peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    info["loadavg_end"] = list(os.getloadavg())
    results.update(
        {
            "info": info,
            "throughput": throughput,
            "memory": memory,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
    )
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


INTEGRITY_CHILD = r"""
import json, os, sys, time
from pathlib import Path
from mechmoe.probes import load_probe
from mechmoe.trajectory import LocalCheckpoints, sweep
from mechmoe.trajectory.sweep import ParameterNorm
import mechmoe.trajectory.store as store_mod
from transformers.utils import logging as hf_logging
hf_logging.disable_progress_bar()
spent = {"write": 0.0, "verify": 0.0, "root": 0.0}
def timed(fn, key):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - t
    return wrapper
for name, key in (("write", "write"), ("verify", "verify"), ("sync_root", "root")):
    setattr(store_mod.TrajectoryStore, name, timed(getattr(store_mod.TrajectoryStore, name), key))
ckpts, root, items, names, repeats = sys.argv[1:6]
probe = load_probe("country_capital_city").head(int(items))
measures = [ParameterNorm() if n == "param_norm" else n for n in names.split(",")]
def one(kind, out):
    if kind == "plain":
        os.environ[store_mod.PLAIN_ENV] = "1"
    else:
        os.environ.pop(store_mod.PLAIN_ENV, None)
    for key in spent:
        spent[key] = 0.0
    w0, c0 = time.perf_counter(), time.process_time()
    s = sweep(LocalCheckpoints(ckpts), probe=probe, measures=measures, out=out)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    store, root_s = spent["write"] + spent["verify"], spent["root"]
    w1 = time.perf_counter()
    again = sweep(LocalCheckpoints(ckpts), probe=probe, measures=measures, out=out)
    assert len(s.done) == len(again.skipped) and not s.failed
    return {"wall": wall, "cpu": cpu, "store": store, "root": root_s,
            "resume": time.perf_counter() - w1}
one("plain", Path(root) / "warm-up.zarr")  # imports, first trace: paid before timing
for i in range(int(repeats)):
    order = ("plain", "checked") if i % 2 == 0 else ("checked", "plain")
    pair = {kind: one(kind, Path(root) / f"{kind}-{i}.zarr") for kind in order}
    print(json.dumps(pair), flush=True)
"""


def _disk_bytes(folder: Path) -> int:
    """Bytes on disk of a folder's files, each hard-linked file counted once."""
    seen, total = set(), 0
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def integrity(root: Path, ckpts: Path, args: argparse.Namespace) -> dict:
    """The same sweep with and without checksums and the root, alternating in one process.

    After a warm-up sweep (imports, first trace), each pair runs the sweep into a fresh
    store once plain and once checked (the order alternates), then resumes it (nothing
    left to do). Ratios are per pair, then the median over pairs.
    """
    import statistics

    work = root / "integrity"
    work.mkdir(parents=True)
    start = list(os.getloadavg())
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            INTEGRITY_CHILD,
            str(ckpts),
            str(work),
            str(args.items),
            INTEGRITY_MEASURES,
            str(args.repeats),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    pairs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

    def med(f):
        return statistics.median(f(p) for p in pairs)

    out = {
        "measures": INTEGRITY_MEASURES.split(","),
        "checkpoints": args.checkpoints,
        "pairs": pairs,
        "wall_ratio_median": med(lambda p: p["checked"]["wall"] / p["plain"]["wall"]),
        "cpu_ratio_median": med(lambda p: p["checked"]["cpu"] / p["plain"]["cpu"]),
        # the store's own extra seconds (checksums, manifests, verification, the root) as a
        # share of the sweep: measured inside the same sweeps, so free of the load's noise
        "store_overhead_median": med(
            lambda p: (p["checked"]["store"] - p["plain"]["store"]) / p["checked"]["wall"]
        ),
        "root_seconds_median": med(lambda p: p["checked"]["root"]),
        "resume_ratio_median": med(lambda p: p["checked"]["resume"] / p["plain"]["resume"]),
        "wall_seconds_median": {k: med(lambda p, k=k: p[k]["wall"]) for k in ("checked", "plain")},
        "disk_bytes": {k: _disk_bytes(work / f"{k}-0.zarr") for k in ("checked", "plain")},
        "loadavg": [start, list(os.getloadavg())],
    }
    print(
        f"integrity over {len(pairs)} pairs: wall {100 * (out['wall_ratio_median'] - 1):+.1f}%, "
        f"CPU {100 * (out['cpu_ratio_median'] - 1):+.1f}%, the store's own extra time "
        f"{100 * out['store_overhead_median']:.1f}% of the sweep (root "
        f"{out['root_seconds_median']:.2f} s), resume {100 * (out['resume_ratio_median'] - 1):+.1f}%",
        flush=True,
    )
    return out


if __name__ == "__main__":
    main()
