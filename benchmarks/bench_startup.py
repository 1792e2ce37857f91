"""Start-up: ``import mechmoe`` and ``mechmoe --help``, against a bare interpreter.

Each case is a fresh ``python`` process, timed from spawn to exit; the cases run
interleaved (round-robin, ``--rounds`` times) so a busy machine slows them alike, and the
median of each is reported with its ratio to ``python -c pass`` measured in the same run.
With ``--compare DIR`` (a copy of another checkout's ``mechmoe/`` package folder's
parent, e.g. from ``git archive REV mechmoe | tar -x -C DIR``) the same cases run on that
source too, so before and after come from one run.

    python benchmarks/bench_startup.py [--rounds 15] [--compare /tmp/before]

Writes ``benchmarks/results_startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

HELP = (
    "import sys; from mechmoe.cli import main; sys.argv = ['mechmoe', '--help']\n"
    "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code\n"
)
CASES = {
    "python -c pass": "pass",
    "import mechmoe": "import mechmoe",
    "mechmoe --help": HELP,
    "import mechmoe.cli": "import mechmoe.cli",
}


def _time(code: str, source: Path) -> float:
    # The source folder first on sys.path (an editable install would be found otherwise);
    # run from it so nothing else named mechmoe is importable.
    env = dict(os.environ, PYTHONPATH=str(source), COLUMNS="100")
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code], cwd=source, env=env, check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--compare", type=Path, default=None, help="another source tree")
    args = ap.parse_args()
    sources = {"this": ROOT}
    if args.compare is not None:
        sources["compare"] = args.compare.resolve()
    for src in sources.values():  # warm the file cache and compile the byte code
        for code in CASES.values():
            _time(code, src)
    times: dict[str, dict[str, list[float]]] = {s: {c: [] for c in CASES} for s in sources}
    for _ in range(args.rounds):
        for src_name, src in sources.items():
            for case, code in CASES.items():
                times[src_name][case].append(_time(code, src))
    base = statistics.median(times["this"]["python -c pass"])
    results = {}
    for src_name in sources:
        for case in CASES:
            med = statistics.median(times[src_name][case])
            results[f"{src_name}: {case}"] = {
                "median_s": round(med, 4),
                "min_s": round(min(times[src_name][case]), 4),
                "ratio_to_bare_python": round(med / base, 2),
            }
            print(f"{src_name:8s} {case:20s} median {med * 1e3:7.1f} ms  ({med / base:4.1f}x bare)")
    out = {
        "rounds": args.rounds,
        "machine": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "results": results,
    }
    (HERE / "results_startup.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
