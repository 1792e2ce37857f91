"""The miniature study end to end: zoo → trajectory sweep of both models → statistics → report.

:func:`run_demo` is what ``mechmoe demo`` (and ``make demo``) runs. Every stage is cached
under :func:`mechmoe.zoo.pretrain.cache_root`: the trained zoo, and one trajectory store
per model and load options (the capture backend, and any other option that changes how
the checkpoints are loaded; a resumed sweep skips the checkpoints already measured), so
a second run only redraws the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Unpack

from mechmoe._types import DEFAULT_BACKEND
from mechmoe.core import progress
from mechmoe.core.errors import InvalidInputError
from mechmoe.model.options import LoadKeywords, LoadOptions
from mechmoe.report.headline import counted, head_share
from mechmoe.zoo.corpus import MAIN_RELATION, build_corpus
from mechmoe.zoo.pretrain import KINDS, Zoo, ZooConfig, cache_root, pretrain

#: The paper's head-masking experiment: the top 10 of OLMoE-1B-7B's 16 × 16 heads.
PAPER_MASKED, PAPER_HEADS = 10, 256

#: Bump when what the demo measures changes (the cached sweeps are then redone).
DEMO_VERSION = 2

#: Labels of the two runs in the table and the report.
RUN_NAMES = {"moe": "MoE (OLMoE architecture)", "dense": "dense (OLMo architecture)"}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo measures; its digest names the cache folder of the sweeps.

    Attributes
    ----------
    zoo
        The pair to train (:class:`~mechmoe.zoo.pretrain.ZooConfig`).
    probe_relations, probe_per_relation
        The held-out probe subset every measure uses (facts spread over frequency ranks).
        Continents are left out: with six possible answers HIT@10 says nothing.
    robustness_ns, robustness_seeds
        Head counts masked, and random-control seeds (each draws its own random heads).
        The headline count (:meth:`masked_heads`) is added to the grid if missing.
    n_masked
        How many top heads the headline drop masks. ``None`` (default): the paper's
        share. The paper masks 10 of OLMoE-1B-7B's 256 heads (16 layers × 16 heads,
        3.9%); the miniature's 16 heads (4 layers × 4) give ``round(16 · 10/256) = 1``.
        More heads per layer at the same width would make "top 10" a fraction like the
        paper's, but measured here they slowed both models' learning (head width 16
        or 8 instead of 32; docs/demo.md), so the count follows the share instead.
    q, tau
        Backbone fraction and consolidation threshold.
    """

    zoo: ZooConfig = field(default_factory=ZooConfig)
    probe_relations: tuple[str, ...] = (MAIN_RELATION, "country_capital_city")
    probe_per_relation: int = 32
    robustness_ns: tuple[int, ...] = (1, 2, 4, 8)
    robustness_seeds: int = 5
    n_masked: int | None = None
    q: float = 0.01
    tau: float = 0.9

    @property
    def total_heads(self) -> int:
        """Attention heads of each model of the zoo (all layers)."""
        return self.zoo.layers * self.zoo.heads

    def masked_heads(self) -> int:
        """The number of top heads the headline drop masks (see ``n_masked``).

        Examples
        --------
        >>> DemoConfig().masked_heads(), DemoConfig(n_masked=3).masked_heads()
        (1, 3)
        """
        if self.n_masked is not None:
            return self.n_masked
        return max(1, round(self.total_heads * PAPER_MASKED / PAPER_HEADS))

    @property
    def digest(self) -> str:
        data = asdict(self)
        data["zoo"] = self.zoo.digest
        data["demo_version"] = DEMO_VERSION
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class DemoResult:
    """Where everything went, the headline figures and the timings of one demo run."""

    config: DemoConfig
    #: The capture backend that measured the sweeps (each has its own stores).
    backend: str
    zoo: Zoo
    stores: dict[str, Path]
    report: Path
    headlines: dict[str, dict[str, Any]]
    #: ``(measure, MoE, dense)``: the headline table, as printed by ``mechmoe demo`` and
    #: drawn at the top of the report (both from :func:`mechmoe.report.headline_rows`).
    rows: list[tuple[str, ...]]
    checks: list[tuple[str, str, str]]
    training: dict[str, dict[str, Any]]
    seconds: dict[str, float]
    swept: dict[str, int]
    #: The same headline read at the paper's head *count* (10), when that differs from
    #: :meth:`DemoConfig.masked_heads` and the models have more heads than that.
    count_headlines: dict[str, dict[str, Any]] | None = None


def demo_measures(config: DemoConfig) -> list[Any]:
    """Every built-in measure, with the demo's robustness and HIT options."""
    from mechmoe.trajectory.measures import DEFAULT_MEASURES, get_measure

    options: dict[str, dict[str, Any]] = {
        "robustness": dict(
            ns=tuple(sorted({*config.robustness_ns, *_headline_counts(config)})),
            seeds=config.robustness_seeds,
            k=10,
        ),
        "hit": dict(ks=(1, 10)),
    }
    return [get_measure(name, **options.get(name, {})) for name in DEFAULT_MEASURES]


def _headline_counts(config: DemoConfig) -> tuple[int, ...]:
    """Head counts the headline reads: the paper's share, and its count where it fits."""
    counts = [config.masked_heads()]
    if PAPER_MASKED < config.total_heads and PAPER_MASKED not in counts:
        counts.append(PAPER_MASKED)
    return tuple(counts)


def demo_dir(
    config: DemoConfig,
    root: str | Path | None = None,
    options: LoadOptions | str = DEFAULT_BACKEND,
) -> Path:
    """The folder of the demo's stores and default report, measured with ``options`` (a
    :class:`~mechmoe.model.options.LoadOptions`, or just a backend's name).

    Each backend has its own folder, so a run on another backend really measures every
    checkpoint with it (the numbers agree to 1e-5, tests/backends/test_equivalence.py)
    instead of reading what the first backend stored; the trained zoo is shared. Options
    besides the backend that differ from the defaults (a dtype, a device) add a digest of
    them to the folder's name, so they get their own stores too.
    """
    opts = options if isinstance(options, LoadOptions) else LoadOptions(backend=options)
    base = Path(root) if root is not None else cache_root()
    others = {k: v for k, v in opts.describe().items() if k != "backend"}
    defaults = {k: v for k, v in LoadOptions().describe().items() if k != "backend"}
    if others == defaults:
        leaf = opts.backend
    else:
        blob = json.dumps(others, sort_keys=True).encode()
        leaf = f"{opts.backend}-{hashlib.sha256(blob).hexdigest()[:8]}"
    return base / "demo" / config.digest / leaf


def run_demo(
    config: DemoConfig | None = None,
    *,
    root: str | Path | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    workers: int = 2,
    scheduler: str | None = None,
    options: LoadOptions | None = None,
    **keywords: Unpack[LoadKeywords],
) -> DemoResult:
    """Run the miniature study and write its report.

    Parameters
    ----------
    config
        What to train and measure (default :class:`DemoConfig`).
    root
        Cache root (default :func:`~mechmoe.zoo.pretrain.cache_root`): the zoo goes to
        ``root/zoo``, the stores and the default report to ``root/demo/<digest>``.
    out
        Report folder (default: ``report`` in the demo folder, replaced on each run). An
        existing report elsewhere is replaced only with ``overwrite=True``.
    workers
        CPU cores to use. With 2 or more the two models train side by side and each
        sweep measures ``workers`` checkpoints at once (a local Dask cluster); with 1
        everything runs in this process. Every worker runs torch with one thread, so
        the numbers do not depend on ``workers`` (and the caches hold either way).
    scheduler
        Address of a running Dask scheduler to sweep on instead (``tcp://host:8786``).
    options, **keywords
        How the sweeps load each checkpoint (:class:`~mechmoe.model.options.LoadOptions`,
        its fields as keywords replacing the value's), e.g. ``backend="transformerlens"``
        or ``device="cuda"``. The zoo does not depend on them (it is trained once); the
        stores and the default report do: each backend, and each other set of options,
        gets its own (:func:`demo_dir`), so every checkpoint is measured as asked, and the
        stores and the report record it. An unknown or uninstalled backend is refused
        before any training; so are ``revision`` and ``tokenizer`` (the zoo's checkpoints
        are folders with their own tokenizer).

    Returns
    -------
    DemoResult
    """
    from mechmoe.analysis import headline, summarize_run
    from mechmoe.backends import get_backend
    from mechmoe.report import build_report, headline_rows, pattern_checks
    from mechmoe.trajectory import LocalCheckpoints, open_store, sweep

    config = config or DemoConfig()
    opts = LoadOptions.build(options, **keywords)
    for name in ("revision", "tokenizer"):
        if getattr(opts, name) is not None:
            raise InvalidInputError(
                f"the demo loads the zoo's own checkpoints, each with its tokenizer; drop {name}="
            )
    backend = opts.backend
    get_backend(backend)  # an unknown or missing backend fails now, not after the training
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    zoo_root = Path(root) / "zoo" if root is not None else None
    zoo = pretrain(replace(config.zoo, threads=workers), root=zoo_root)
    seconds["zoo"] = time.perf_counter() - t0

    folder = demo_dir(config, root, opts)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(config.zoo.corpus)
    probe = corpus.probe_set(config.probe_relations, per_relation=config.probe_per_relation)
    measures = demo_measures(config)
    stores: dict[str, Path] = {}
    swept: dict[str, int] = {}
    t1 = time.perf_counter()
    with progress.task("sweep both models", total=len(KINDS)) as bar:
        for kind in KINDS:
            store = folder / f"{kind}.zarr"
            summary = sweep(
                LocalCheckpoints(zoo.checkpoints_dir(kind)),
                probe=probe,
                measures=measures,
                out=store,
                name=f"miniature {RUN_NAMES[kind]}",
                # One torch thread per worker: on a shared machine a second thread in
                # every small op mostly waits for a core (measured: over 10x the CPU time);
                # worker processes use the cores instead.
                threads=1,
                executor="dask" if workers > 1 or scheduler else "local",
                workers=workers,
                scheduler=scheduler,
                options=opts,
            )
            stores[kind] = store
            swept[kind] = len(summary.done)
            if summary.failed:
                step, error = sorted(summary.failed.items())[0]
                raise InvalidInputError(
                    f"the sweep of the {kind} model failed at "
                    f"{counted(len(summary.failed), 'checkpoint')}, "
                    f"first at step {step}: {error}; run the demo again to retry them"
                )
            bar.advance()
    seconds["sweep"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    datasets = [open_store(stores[kind]) for kind in KINDS]
    counts = _headline_counts(config)
    by_count = [
        [headline(summarize_run(ds, q=config.q, tau=config.tau, n_masked=n)) for ds in datasets]
        for n in counts
    ]
    headlines = dict(zip(KINDS, by_count[0], strict=True))
    count_headlines = dict(zip(KINDS, by_count[1], strict=True)) if len(counts) > 1 else None
    checks = pattern_checks(headlines["moe"], headlines["dense"])
    training = {kind: zoo.log(kind) for kind in KINDS}
    # the terminal's table and the report's are built by one function from these same inputs
    notes, extra = _count_notes(config), [_held_out_row(zoo, training)]
    rows = headline_rows(datasets, by_count, notes=notes, extra=extra)
    report_dir = Path(out) if out is not None else folder / "report"
    report = build_report(
        datasets[0],
        datasets[1],
        report_dir,
        names=tuple(RUN_NAMES[kind] for kind in KINDS),
        title="mechmoe miniature study: a tiny MoE and a tiny dense model pre-trained here",
        notes=_notes(zoo, training, config, backend),
        q=config.q,
        tau=config.tau,
        n_masked=counts,
        count_notes=notes,
        extra_rows=extra,
        overwrite=overwrite or out is None,
    )
    seconds["report"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    return DemoResult(
        config=config,
        backend=backend,
        zoo=zoo,
        stores=stores,
        report=report,
        headlines=headlines,
        rows=rows,
        checks=checks,
        training=training,
        seconds=seconds,
        swept=swept,
        count_headlines=count_headlines,
    )


def _count_notes(config: DemoConfig) -> dict[int, str]:
    """What each masked-head count of the headline stands for, next to the paper's."""
    n = config.masked_heads()
    notes = {n: f"{head_share(n, config.total_heads)}; paper: {PAPER_MASKED} of {PAPER_HEADS}"}
    for m in _headline_counts(config)[1:]:
        notes[m] = "the paper's count"
    return notes


def _held_out_row(zoo: Zoo, training: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """Held-out HIT@k on the main relation at each model's last checkpoint (its training log)."""
    k = zoo.config.eval_k
    return (
        f"held-out HIT@{k} {MAIN_RELATION}, last checkpoint",
        *(
            f"{training[kind]['checkpoints'][-1]['eval'][MAIN_RELATION][f'hit@{k}']:.3f}"
            for kind in KINDS
        ),
    )


def _notes(
    zoo: Zoo, training: dict[str, dict[str, Any]], config: DemoConfig, backend: str
) -> list[str]:
    cfg = zoo.config
    n, total = config.masked_heads(), config.total_heads
    k = cfg.eval_k
    lines = [
        f"Both models were pre-trained here from scratch by mechmoe (zoo {cfg.digest}) on a "
        f"generated corpus of geographic facts (city → country for "
        f"{counted(len(build_corpus(cfg.corpus).facts_of(MAIN_RELATION)), 'city', 'cities')}, "
        "country → capital, "
        "currency, language, continent), each fact stated with 16 training templates and repeated "
        f"with a Zipf spread (exponent {cfg.corpus.zipf_exponent}), mixed with filler text. Same "
        f"data order, {counted(training['moe']['steps'], 'step')} of {cfg.batch_size} × "
        f"{cfg.seq_len} tokens each, AdamW with a cosine schedule, on CPU.",
        f"MoE: {counted(cfg.layers, 'layer')}, hidden {cfg.hidden}, "
        f"{counted(cfg.n_experts, 'expert')} of width "
        f"{cfg.expert_width}, top-{cfg.top_k}. Dense: the same with one MLP of width "
        f"{cfg.dense_width}. Active parameters per token: MoE "
        f"{training['moe']['active_params_per_token']:,}, dense "
        f"{training['dense']['active_params_per_token']:,}.",
    ]
    for kind in KINDS:
        log = training[kind]
        main = log["checkpoints"][-1]["eval"].get(MAIN_RELATION, {})
        lines.append(
            f"{RUN_NAMES[kind]}: {log['steps_per_second']:.2f} steps/s, trained in "
            f"{log['train_seconds']:.0f} s; final training loss "
            f"{log['checkpoints'][-1]['train_loss']:.3f}; held-out HIT@{k} on {MAIN_RELATION} "
            f"{main.get(f'hit@{k}', float('nan')):.3f} (guessing the {k} commonest answers: "
            f"{log['answer_prior_hit'].get(MAIN_RELATION, float('nan')):.3f})."
        )
    lines.append(
        f"The probe every measure uses: {counted(config.probe_per_relation, 'fact')} per "
        f"relation of {', '.join(config.probe_relations)}, asked with held-out templates that "
        f"never occur in the training text. The headline drop masks the top {n} of the "
        f"{counted(total, 'head')} ({counted(cfg.layers, 'layer')} × {cfg.heads}; "
        f"{100 * n / total:.1f}%), ranked by head Gated-LPI on this probe at each checkpoint, "
        f"against {counted(n, 'head')} drawn at random "
        f"({counted(config.robustness_seeds, 'draw')}). The paper masks {PAPER_MASKED} of "
        f"OLMoE's {PAPER_HEADS} heads ({100 * PAPER_MASKED / PAPER_HEADS:.1f}%); the miniature "
        "masks the same share, rounded."
    )
    lines.append(
        f"Every checkpoint was measured with the {backend} capture backend (recorded in each "
        "store); the backends agree to 1e-5, and each has its own cached stores."
    )
    return lines


__all__ = [
    "RUN_NAMES",
    "DemoConfig",
    "DemoResult",
    "demo_dir",
    "demo_measures",
    "run_demo",
]
