"""A trajectory over local checkpoints: sweep measures, compute the statistics, draw a figure.

    python examples/trajectory_local.py OUT                  # stand-in checkpoints (seconds)
    python examples/trajectory_local.py OUT CHECKPOINTS      # your folder of step{N}/ checkpoints

``CHECKPOINTS`` is a folder whose sub-folders are HF checkpoints named ``step{N}`` (or
``step{N}-tokens{M}B``), as training scripts save them. Without it the example writes
three tiny random OLMoE checkpoints first, so everything runs in seconds; their
statistics are those of random models, the point is the calls. The sweep is resumable:
run the example twice and the second run skips every checkpoint already stored.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import mechmoe
from mechmoe.probes import load_probe
from mechmoe.testing import save_tiny


def main(out: str, checkpoints: str | None = None) -> Path:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if checkpoints is None:
        checkpoints = str(out_dir / "checkpoints")
        for step, seed in ((100, 0), (200, 1), (400, 2)):
            if not (Path(checkpoints) / f"step{step}").exists():
                save_tiny("olmoe", Path(checkpoints) / f"step{step}", seed=seed)

    probe = load_probe("country_capital_city").head(8)
    summary = mechmoe.sweep(
        mechmoe.LocalCheckpoints(checkpoints),
        probe=probe,
        measures=["neuron_lpi", "hit"],
        out=out_dir / "run.zarr",
    )
    print(f"computed {summary.done}, already stored {summary.skipped}, failed {summary.failed}")

    store = mechmoe.open_store(out_dir / "run.zarr")
    stats = mechmoe.summarize_run(store)
    print(f"top-1% backbone share: {float(stats['backbone_share']):.1%}")
    step = float(stats["consolidation_step"])
    print(f"consolidation step: {'never' if step != step else int(step)}")  # NaN: never

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    lorenz = stats["lorenz"]
    left.plot(lorenz[lorenz.dims[0]], lorenz, label="positive updates")
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", label="equal share")
    left.set(xlabel="share of neurons", ylabel="share of positive updates", title="Lorenz curve")
    left.legend()
    hit = store["hit"].sel(k=10).mean("relation")  # relations weighted equally
    right.plot(hit["step"], hit, marker="o")
    right.set(xlabel="training step", ylabel="HIT@10", title="recall over training")
    figure = out_dir / "trajectory.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    print(f"figure: {figure}")
    return figure


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(*sys.argv[1:3])
