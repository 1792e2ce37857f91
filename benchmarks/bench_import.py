"""Start-up time: ``python -c "import mechmoe"`` and ``mechmoe --help``, against a baseline tree.

Both commands run in fresh interpreters, the two trees interleaved run by run (so a busy
machine slows both alike); the figures are medians and the ratio is this tree's over the
baseline's, measured in the same run.

    git archive <base-commit> mechmoe | tar -x -C /tmp/base
    python benchmarks/bench_import.py --baseline /tmp/base --runs 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "import mechmoe": ["-c", "import mechmoe"],
    "mechmoe --help": ["-m", "mechmoe", "--help"],
}


def _once(tree: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "100"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *args], env=env, check=True, cwd=tree, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="a tree holding the old mechmoe/")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    trees = {"this tree": ROOT, "baseline": args.baseline.resolve()}
    times: dict[tuple[str, str], list[float]] = {(t, c): [] for t in trees for c in COMMANDS}
    for tree in trees.values():  # warm the file cache and the bytecode
        for cmd in COMMANDS.values():
            _once(tree, cmd)
    for _ in range(args.runs):
        for command, cmd in COMMANDS.items():
            for label, tree in trees.items():
                times[(label, command)].append(_once(tree, cmd))
    for command in COMMANDS:
        new = statistics.median(times[("this tree", command)])
        old = statistics.median(times[("baseline", command)])
        print(
            f"{command:16s} this tree {1e3 * new:7.1f} ms   baseline {1e3 * old:7.1f} ms   "
            f"ratio {new / old:.3f}   (medians of {args.runs})"
        )


if __name__ == "__main__":
    main()
