"""Pre-train the miniature pair: a tiny OLMoE-architecture MoE and a tiny dense OLMo.

Both models are plain ``transformers`` classes (``OlmoeForCausalLM``, ``OlmoForCausalLM``),
so every adapter and operation of mechmoe applies to their checkpoints unchanged. They
share everything but the feed-forward block: the MoE has ``n_experts`` experts of width
``expert_width`` with ``top_k`` chosen per token, the dense model one MLP of width
``top_k × expert_width``, so both spend the same *active* parameters per token. They see
the same token blocks in the same order for the same number of steps (one pass over the
corpus of :mod:`mechmoe.zoo.corpus`), with AdamW and a cosine schedule, on CPU, each with
one torch thread; with ``threads >= 2`` the two train at the same time in two worker
processes (same weights as one after the other).

About :attr:`ZooConfig.n_checkpoints` log-spaced checkpoints are saved per model as HF
folders named ``step{N}-tokens{M}K`` (the names :mod:`mechmoe.trajectory.sources`
parses), each with the tokenizer, and ``training.json`` beside them holds the training
loss and the held-out HIT@k of every checkpoint.

Runs are cached under :func:`~mechmoe.core.cache.cache_root` (``$MECHMOE_CACHE``, else the XDG user cache
directory) in a folder named after the config's digest. A file lock keeps two processes
from training the same zoo at once (the second waits, then finds it done), and each
model's folder appears only once its training is complete (written to a temporary folder
and renamed by :mod:`mechmoe.core.writer`), so an interrupted run never looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechmoe._types import ModelKind
from mechmoe.core import progress
from mechmoe.core.cache import cache_root
from mechmoe.core.checks import check_choice
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.writer import prepare_output
from mechmoe.zoo.corpus import (
    FEW_ANSWER_RELATIONS,
    MAIN_RELATION,
    Corpus,
    CorpusConfig,
    build_corpus,
    token_stream,
    train_tokenizer,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from mechmoe.probes import ProbeSet

Kind = ModelKind
KINDS: tuple[Kind, ...] = ("moe", "dense")
LOG_NAME = "training.json"
ZOO_KIND = "zoo"
#: Bump when the training code changes in a way that changes the weights.
TRAINER_VERSION = 2


@dataclass(frozen=True)
class ZooConfig:
    """Sizes and training settings of the pair; its :attr:`digest` names the cache folder.

    The defaults are the miniature study (under 10 minutes for both on 2 idle CPU
    cores); :func:`tiny_zoo_config` gives a seconds-long one for tests. Both models share
    every setting: the same learning-rate schedule, batch, steps and initialisation
    (weights drawn with standard deviation ``1/√hidden``, see :func:`model_config`).

    ``threads`` is how many models train at once, one torch thread each; it does not
    change the weights, so it is not part of the digest.
    """

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    vocab_size: int = 2048
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    n_experts: int = 16
    top_k: int = 2
    expert_width: int = 64
    seq_len: int = 64
    batch_size: int = 8
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.01
    router_aux_loss_coef: float = 0.01
    n_checkpoints: int = 15
    first_checkpoint: int = 32
    max_steps: int | None = None
    eval_per_relation: int = 200
    eval_k: int = 10
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.top_k > self.n_experts:
            raise InvalidInputError(f"top_k ({self.top_k}) exceeds n_experts ({self.n_experts})")
        if self.hidden % self.heads:
            raise InvalidInputError(
                f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})"
            )
        for name in ("hidden", "layers", "heads", "n_experts", "top_k", "expert_width",
                     "seq_len", "batch_size", "n_checkpoints", "first_checkpoint", "threads"):  # fmt: skip
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def dense_width(self) -> int:
        """Width of the dense MLP: the MoE's active expert width per token."""
        return self.top_k * self.expert_width

    @property
    def digest(self) -> str:
        """Hash of everything that changes the weights (not ``threads``)."""
        data = asdict(self)
        data.pop("threads")
        data["trainer_version"] = TRAINER_VERSION
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def tiny_zoo_config(**overrides: Any) -> ZooConfig:
    """A zoo that trains in a few seconds (tests, doc examples)."""
    base = ZooConfig(
        corpus=CorpusConfig(scale=0.03, relations=("city_country", "country_capital_city")),
        vocab_size=400,
        hidden=32,
        layers=2,
        heads=2,
        n_experts=4,
        top_k=2,
        expert_width=16,
        seq_len=32,
        batch_size=8,
        lr=5e-3,
        warmup_steps=5,
        n_checkpoints=4,
        first_checkpoint=2,
        eval_per_relation=20,
        threads=1,
    )
    return replace(base, **overrides)


# ---- cache ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Zoo:
    """A trained (or to-be-trained) pair in its cache folder."""

    config: ZooConfig
    root: Path

    def model_dir(self, kind: Kind) -> Path:
        return self.root / kind

    def checkpoints_dir(self, kind: Kind) -> Path:
        """The folder of ``step…-tokens…`` checkpoints (a local checkpoint source)."""
        return self.root / kind / "checkpoints"

    def is_trained(self, kind: Kind) -> bool:
        return (self.model_dir(kind) / LOG_NAME).is_file()

    def log(self, kind: Kind) -> dict[str, Any]:
        """The training record of ``kind`` (losses, HIT@k per checkpoint, timings)."""
        path = self.model_dir(kind) / LOG_NAME
        if not path.is_file():
            raise InvalidInputError(
                f"the {kind} model of zoo {self.config.digest} is not trained yet; run "
                "`mechmoe zoo pretrain`"
            )
        return json.loads(path.read_text(encoding="utf-8"))

    def checkpoint_names(self, kind: Kind) -> list[str]:
        return [c["name"] for c in self.log(kind)["checkpoints"]]


def zoo_at(config: ZooConfig | None = None, root: str | Path | None = None) -> Zoo:
    """The :class:`Zoo` of ``config`` under ``root`` (default ``cache_root()/zoo``)."""
    config = config or ZooConfig()
    base = Path(root) if root is not None else cache_root() / "zoo"
    return Zoo(config, base / config.digest)


# ---- models ---------------------------------------------------------------------------


def model_config(config: ZooConfig, kind: Kind, vocab_size: int) -> Any:
    """The ``transformers`` config of the ``kind`` model."""
    import transformers as tf

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=config.hidden,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=max(256, config.seq_len),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        # Fan-in initialisation for both models. transformers' default (0.02) suits
        # widths in the thousands; at 128 it starts every projection 4x too small.
        # Measured (docs/demo.md): final held-out HIT@10 0.43 -> 0.52 for the dense
        # model, 0.82 -> 0.83 for the MoE.
        initializer_range=config.hidden**-0.5,
    )
    if kind == "moe":
        return tf.OlmoeConfig(
            **common,
            intermediate_size=config.expert_width,
            num_experts=config.n_experts,
            num_experts_per_tok=config.top_k,
            router_aux_loss_coef=config.router_aux_loss_coef,
            norm_topk_prob=False,
        )
    if kind == "dense":
        return tf.OlmoConfig(**common, intermediate_size=config.dense_width)
    raise InvalidInputError(f"unknown model kind {kind!r}; choose moe or dense")


def active_params(config: ZooConfig, kind: Kind) -> int:
    """Parameters one token passes through (experts: only the ``top_k`` chosen; router counted).

    Examples
    --------
    >>> cfg = ZooConfig()
    >>> active_params(cfg, "moe") - active_params(cfg, "dense") == cfg.layers * cfg.hidden * cfg.n_experts
    True
    """
    d, w = config.hidden, config.expert_width
    attn = 4 * d * d
    ffn = (
        3 * d * config.dense_width
        if kind == "dense"
        else 3 * d * w * config.top_k + d * config.n_experts
    )
    return config.layers * (attn + ffn) + 2 * config.vocab_size * d


def checkpoint_steps(config: ZooConfig, total: int) -> list[int]:
    """About ``n_checkpoints`` log-spaced steps from ``first_checkpoint`` to ``total``.

    Examples
    --------
    >>> checkpoint_steps(ZooConfig(n_checkpoints=5, first_checkpoint=10), 1000)
    [10, 32, 100, 316, 1000]
    """
    first = min(config.first_checkpoint, total)
    n = config.n_checkpoints
    if n == 1 or first == total:
        return [total]
    ratio = (total / first) ** (1 / (n - 1))
    steps = sorted({round(first * ratio**i) for i in range(n)} | {total})
    return [s for s in steps if 1 <= s <= total]


def checkpoint_name(step: int, tokens: int) -> str:
    """``step{N}-tokens{M}K``, the name the trajectory sources parse.

    Examples
    --------
    >>> checkpoint_name(100, 204800)
    'step100-tokens204.8K'
    """
    k = Decimal(tokens) / 1000
    text = format(k.normalize(), "f")
    return f"step{step}-tokens{text}K"


# ---- data -----------------------------------------------------------------------------


def token_blocks(config: ZooConfig, corpus: Corpus, tokenizer: Any) -> torch.Tensor:
    """The training stream cut into ``seq_len`` blocks, in a seeded order (same for both models)."""
    import torch

    stream = token_stream(corpus, tokenizer)
    n = len(stream) // config.seq_len
    if n < config.batch_size:
        raise InvalidInputError(
            f"the corpus gives only {n} blocks of {config.seq_len} tokens, fewer than one batch "
            f"of {config.batch_size}; enlarge corpus.scale"
        )
    blocks = torch.tensor(stream[: n * config.seq_len], dtype=torch.long).view(n, config.seq_len)
    gen = torch.Generator().manual_seed(config.seed)
    return blocks[torch.randperm(n, generator=gen)]


def total_steps(config: ZooConfig, n_blocks: int) -> int:
    steps = n_blocks // config.batch_size
    return min(steps, config.max_steps) if config.max_steps else steps


# ---- evaluation -----------------------------------------------------------------------


def hit_at_k(
    model: PreTrainedModel,
    tokenizer: Any,
    probe: ProbeSet,
    *,
    ks: Sequence[int] = (1, 10),
    batch_size: int = 128,
) -> dict[str, dict[str, float]]:
    """Per relation: HIT@k for each ``k`` and MRR of the gold object's first token.

    A lean twin of :func:`mechmoe.probes.evaluate` for the training loop (same tokens,
    same left padding and position ids, no model wrapper); the tests check that the
    two agree.
    """
    import torch

    from mechmoe.probes import first_token_ids

    prompts = list(probe.prompts)
    targets = torch.tensor(first_token_ids(tokenizer, probe.objects, prompts))
    ranks = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in chunk]
            width = max(map(len, ids))
            input_ids = torch.full((len(ids), width), int(tokenizer.pad_token_id))
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for b, row in enumerate(ids):
                input_ids[b, width - len(row) :] = torch.tensor(row)
                mask[b, width - len(row) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            gold = targets[start : start + len(chunk)]
            gold_logit = logits.gather(1, gold[:, None])
            ranks.append((logits > gold_logit).sum(-1) + 1)
    model.train(was_training)
    rank = torch.cat(ranks).double()
    out: dict[str, dict[str, float]] = {}
    relations = [it.relation for it in probe]
    for name in probe.relation_names:
        sel = torch.tensor([r == name for r in relations])
        r = rank[sel]
        row = {f"hit@{k}": float((r <= k).double().mean()) for k in ks}
        row["mrr"] = float((1.0 / r).mean())
        out[name] = row
    return out


def eval_probe(config: ZooConfig, corpus: Corpus) -> ProbeSet:
    """The held-out probe set the training record is scored on (template 0, rank-spread subset)."""
    return corpus.probe_set(per_relation=config.eval_per_relation)


# ---- training -------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_settings() -> Iterator[None]:
    """One intra-op thread and deterministic kernels while training.

    The thread count is fixed (not an option) because float sums over a different number
    of threads round differently: with it fixed, the weights depend only on what the
    config digest covers, whichever ``threads`` trains them.
    """
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _lr_at(config: ZooConfig, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio · lr`` (``step`` counts from 0)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(total - config.warmup_steps, 1)
    progress_ = min((step - config.warmup_steps) / span, 1.0)
    cos = 0.5 * (1 + math.cos(math.pi * progress_))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cos)


def train_one(
    config: ZooConfig,
    kind: Kind,
    blocks: torch.Tensor,
    tokenizer: PreTrainedTokenizerFast,
    probe: ProbeSet,
    out_dir: Path,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train the ``kind`` model, saving checkpoints into ``out_dir/checkpoints``; return its record.

    Runs in the calling thread with whatever torch settings are active (:func:`pretrain`
    uses one thread and deterministic kernels). ``on_step(step, loss)`` is called after
    every optimiser step (a worker process reports its progress through it).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from mechmoe.model import quiet_hf_progress

    total = total_steps(config, len(blocks))
    saves = set(checkpoint_steps(config, total))
    hf_config = model_config(config, kind, len(tokenizer))
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    is_moe = kind == "moe"
    records: list[dict[str, Any]] = []
    window: list[float] = []
    tokens_per_step = config.batch_size * config.seq_len
    ckpt_root = out_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cpu_started = time.process_time()
    train_seconds = 0.0
    with progress.task(f"pretrain {kind}", total=total) as bar:
        for step in range(total):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = _lr_at(config, step, total)
            batch = blocks[step * config.batch_size : (step + 1) * config.batch_size]
            kwargs = {"output_router_logits": True} if is_moe else {}
            out = model(input_ids=batch, labels=batch, **kwargs)
            loss = out.loss
            lm_loss = loss - config.router_aux_loss_coef * out.aux_loss if is_moe else loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            train_seconds += time.perf_counter() - t0
            window.append(float(lm_loss.detach()))
            done = step + 1
            bar.update(description=f"pretrain {kind} · loss {window[-1]:.3f}")
            bar.advance()
            if on_step is not None:
                on_step(done, window[-1])
            if done in saves:
                tokens = done * tokens_per_step
                name = checkpoint_name(done, tokens)
                scores = hit_at_k(model, tokenizer, probe, ks=(1, config.eval_k))
                path = ckpt_root / name
                with quiet_hf_progress():
                    model.save_pretrained(path)
                    tokenizer.save_pretrained(path)
                records.append(
                    {
                        "name": name,
                        "step": done,
                        "tokens": tokens,
                        "train_loss": sum(window) / len(window),
                        "eval": scores,
                    }
                )
                window = []
    main = records[-1]["eval"].get(MAIN_RELATION, next(iter(records[-1]["eval"].values())))
    return {
        "kind": kind,
        "architecture": type(model).__name__,
        "total_params": sum(p.numel() for p in model.parameters()),
        "active_params_per_token": active_params(config, kind),
        "lr": config.lr,
        "steps": total,
        "tokens_per_step": tokens_per_step,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "threads": 1,
        "steps_per_second": total / train_seconds if train_seconds else float("nan"),
        "final_main_hit": main[f"hit@{config.eval_k}"],
        "checkpoints": records,
    }


def _worker(
    config: ZooConfig,
    kind: Kind,
    blocks: Any,
    tokenizer_dir: str,
    probe: ProbeSet,
    out_dir: str,
    queue: Any,
) -> None:
    """Train one model in a worker process, reporting steps and the result on ``queue``."""
    try:
        import torch
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
        with _torch_settings():
            record = train_one(
                config,
                kind,
                torch.from_numpy(blocks),
                tokenizer,
                probe,
                Path(out_dir),
                on_step=lambda step, loss: queue.put(("step", kind, step, loss)),
            )
        queue.put(("done", kind, record))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        import pickle
        import traceback

        text = traceback.format_exc()
        try:
            pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - an unpicklable error travels as its text
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        queue.put(("error", kind, exc, text))


def _train_side_by_side(
    config: ZooConfig,
    kinds: Sequence[Kind],
    blocks: torch.Tensor,
    tokenizer_dir: Path,
    probe: ProbeSet,
    out_dirs: dict[Kind, Path],
) -> dict[Kind, dict[str, Any]]:
    """Train ``kinds`` at the same time, one worker process (one thread) each.

    Worker processes rather than threads: the models are small, so much of a step is
    Python overhead, which threads would serialise on the GIL. Each worker runs exactly
    what :func:`train_one` runs in-process, so the weights are the same either way.
    """
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # fork is unsafe once torch has started threads
    messages = ctx.Queue()
    array = blocks.numpy()
    workers = {
        kind: ctx.Process(
            target=_worker,
            args=(config, kind, array, str(tokenizer_dir), probe, str(out_dirs[kind]), messages),
            name=f"mechmoe-pretrain-{kind}",
            daemon=True,
        )
        for kind in kinds
    }
    total = total_steps(config, len(blocks))
    losses = {kind: math.nan for kind in kinds}
    steps = dict.fromkeys(kinds, 0)
    records: dict[Kind, dict[str, Any]] = {}
    label = " + ".join(kinds)
    with progress.task(f"pretrain {label}", total=total * len(kinds)) as bar:
        for proc in workers.values():
            proc.start()
        try:
            while len(records) < len(kinds):
                try:
                    msg = messages.get(timeout=1.0)
                except queue_mod.Empty:
                    for kind, proc in workers.items():
                        if kind not in records and not proc.is_alive() and messages.empty():
                            raise RuntimeError(
                                f"the worker training the {kind} model stopped "
                                f"(exit code {proc.exitcode}) without a result"
                            ) from None
                    continue
                if msg[0] == "step":
                    _, kind, step, loss = msg
                    bar.advance(step - steps[kind])
                    steps[kind], losses[kind] = step, loss
                    bar.update(
                        description="pretrain · "
                        + " · ".join(f"{k} loss {losses[k]:.3f}" for k in kinds)
                    )
                elif msg[0] == "done":
                    records[msg[1]] = msg[2]
                else:
                    _, kind, exc, text = msg
                    exc.add_note(f"(raised while training the {kind} model in a worker:\n{text})")
                    raise exc
        finally:
            for proc in workers.values():
                if proc.is_alive():
                    proc.terminate()
                proc.join()
    return records


def pretrain(
    config: ZooConfig | None = None,
    *,
    root: str | Path | None = None,
    kinds: Sequence[str] = KINDS,
    retrain: bool = False,
) -> Zoo:
    """Train (or find in the cache) the zoo's models and return the :class:`Zoo`.

    Parameters
    ----------
    config
        Sizes and settings (default: the miniature study, :class:`ZooConfig`).
    root
        Parent folder of zoos (default ``cache_root()/zoo``).
    kinds
        Which models: ``"moe"``, ``"dense"`` or both.
    retrain
        Train again even if a finished model is cached (it then replaces the old one).

    Returns
    -------
    Zoo
        ``zoo.checkpoints_dir(kind)`` is a folder of HF checkpoints; ``zoo.log(kind)``
        the training record.
    """
    import filelock

    config = config or ZooConfig()
    for kind in kinds:
        check_choice(kind, ModelKind, name="kinds")
    zoo = zoo_at(config, root)
    zoo.root.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(zoo.root.parent / f"{config.digest}.lock"))
    with lock:
        todo: list[Kind] = [k for k in KINDS if k in kinds and (retrain or not zoo.is_trained(k))]
        if not todo:
            return zoo
        out = prepare_output(zoo.root, kind=ZOO_KIND, append=True, overwrite=retrain)
        if not (zoo.root / "config.json").is_file():
            with out.child("config.json", folder=False) as tmp:
                tmp.write_text(json.dumps(_describe(config), indent=2))
        with progress.task("corpus and tokenizer", total=None):
            corpus = build_corpus(config.corpus)
            tokenizer = _tokenizer(zoo, config, corpus, out)
            blocks = token_blocks(config, corpus, tokenizer)
        probe = eval_probe(config, corpus)

        def finish(kind: Kind, record: dict[str, Any], folder: Path) -> None:
            record["zoo"] = config.digest
            record["corpus"] = corpus.digest
            record["answer_prior_hit"] = {
                r: corpus.answer_prior_hit(r, config.eval_k) for r in probe.relation_names
            }
            record["few_answer_relations"] = sorted(FEW_ANSWER_RELATIONS)
            (folder / LOG_NAME).write_text(json.dumps(record, indent=2))

        if config.threads >= 2 and len(todo) >= 2:
            # Every model's folder commits together once all have trained.
            with contextlib.ExitStack() as stack:
                folders = {kind: stack.enter_context(out.child(kind)) for kind in todo}
                records = _train_side_by_side(
                    config, todo, blocks, zoo.root / "tokenizer", probe, folders
                )
                for kind in todo:
                    finish(kind, records[kind], folders[kind])
        else:
            with _torch_settings():
                for kind in todo:
                    with out.child(kind) as folder:
                        record = train_one(config, kind, blocks, tokenizer, probe, folder)
                        finish(kind, record, folder)
    return zoo


def _describe(config: ZooConfig) -> dict[str, Any]:
    from mechmoe._version import __version__

    return {
        "zoo": config.digest,
        "config": asdict(config),
        "dense_width": config.dense_width,
        "active_params_per_token": {k: active_params(config, k) for k in KINDS},
        "mechmoe_version": __version__,
    }


def _tokenizer(zoo: Zoo, config: ZooConfig, corpus: Corpus, out: Any) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    path = zoo.root / "tokenizer"
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    tok = train_tokenizer(corpus, config.vocab_size)
    with out.child("tokenizer") as tmp:
        tok.save_pretrained(tmp)
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def load_corpus(zoo: Zoo) -> Corpus:
    """The corpus a zoo was trained on (rebuilt deterministically from its config)."""
    return build_corpus(zoo.config.corpus)


__all__ = [
    "KINDS",
    "LOG_NAME",
    "Zoo",
    "ZooConfig",
    "active_params",
    "cache_root",
    "checkpoint_name",
    "checkpoint_steps",
    "hit_at_k",
    "load_corpus",
    "model_config",
    "pretrain",
    "tiny_zoo_config",
    "token_blocks",
    "train_one",
    "zoo_at",
]
