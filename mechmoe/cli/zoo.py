"""``mechmoe zoo``: pre-train the miniature MoE / dense pair, or show where it is cached."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from mechmoe._types import ModelKind
from mechmoe.cli._common import choice, console
from mechmoe.core.checks import choice_values
from mechmoe.zoo.corpus import MAIN_RELATION, CorpusConfig
from mechmoe.zoo.pretrain import Zoo, ZooConfig, pretrain, zoo_at

app = typer.Typer(
    help="The miniature zoo: a tiny OLMoE and a tiny dense OLMo pre-trained here, with checkpoints.",
    no_args_is_help=True,
)

KindOpt = choice(
    Literal[ModelKind, "both"], "--kind", help="Which model to train: moe, dense or both."
)
RootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root", help="Parent folder of zoos (default: $MECHMOE_CACHE/zoo or the user cache)."
    ),
]
ThreadsOpt = Annotated[
    int,
    typer.Option(
        "--threads",
        help="CPU cores: with 2 or more the two models train at once, one thread each.",
        min=1,
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the corpus, init and data order.")]
StepsOpt = Annotated[
    int | None,
    typer.Option("--max-steps", help="Stop after this many steps (default: one pass).", min=1),
]
RetrainOpt = Annotated[
    bool, typer.Option("--retrain", help="Train again even if the cache holds finished models.")
]


def _kinds(kind: str) -> tuple[str, ...]:
    return choice_values(ModelKind) if kind == "both" else (kind,)


def print_zoo(zoo: Zoo, kinds: tuple[str, ...]) -> None:
    """Table of the trained models: sizes, speed, loss and held-out HIT@k at the end."""
    k = zoo.config.eval_k
    table = Table(title=f"zoo {zoo.config.digest}  ({zoo.root})")
    for col in ("model", "architecture", "params", "active/token", "steps", "steps/s",
                "train time", "final loss", f"held-out HIT@{k} {MAIN_RELATION}",
                f"prior HIT@{k}"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("model", "architecture") else "right")
    for kind in kinds:
        if not zoo.is_trained(kind):
            continue
        log = zoo.log(kind)
        last = log["checkpoints"][-1]
        main = last["eval"].get(MAIN_RELATION, {})
        table.add_row(
            kind,
            log["architecture"],
            f"{log['total_params']:,}",
            f"{log['active_params_per_token']:,}",
            str(log["steps"]),
            f"{log['steps_per_second']:.2f}",
            f"{log['train_seconds']:.0f} s",
            f"{last['train_loss']:.3f}",
            f"{main.get(f'hit@{k}', float('nan')):.3f}",
            f"{log['answer_prior_hit'].get(MAIN_RELATION, float('nan')):.3f}",
        )
    console.print(table)
    for kind in kinds:
        console.print(f"{kind} checkpoints: {zoo.checkpoints_dir(kind)}", highlight=False)


@app.command("pretrain")
def pretrain_cmd(
    kind: KindOpt = "both",
    root: RootOpt = None,
    threads: ThreadsOpt = 2,
    seed: SeedOpt = 0,
    max_steps: StepsOpt = None,
    retrain: RetrainOpt = False,
) -> None:
    """Train the miniature pair (cached: a second run returns at once) and print a summary."""
    kinds = _kinds(kind)
    base = ZooConfig()
    config = replace(
        base,
        corpus=CorpusConfig(seed=seed),
        seed=seed,
        threads=threads,
        max_steps=max_steps,
    )
    zoo = pretrain(config, root=root, kinds=kinds, retrain=retrain)  # type: ignore[arg-type]
    print_zoo(zoo, kinds)


@app.command("path")
def path_cmd(root: RootOpt = None, seed: SeedOpt = 0, max_steps: StepsOpt = None) -> None:
    """Print where the zoo of these settings is (or will be) cached."""
    config = replace(ZooConfig(), corpus=CorpusConfig(seed=seed), seed=seed, max_steps=max_steps)
    zoo = zoo_at(config, root)
    console.print(str(zoo.root), highlight=False, soft_wrap=True)
    print_zoo(zoo, ("moe", "dense"))


__all__ = ["app", "print_zoo"]
