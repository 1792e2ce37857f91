"""The miniature zoo: a tiny MoE and dense pair trains end to end, deterministically, cached."""

from __future__ import annotations

import pytest

from mechmoe.errors import InvalidInputError
from mechmoe.zoo.pretrain import (
    KINDS,
    ZooConfig,
    active_params,
    cache_root,
    checkpoint_name,
    checkpoint_steps,
    load_corpus,
    pretrain,
    tiny_zoo_config,
    zoo_at,
)

CFG = tiny_zoo_config(max_steps=24)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return pretrain(CFG, root=tmp_path_factory.mktemp("zoo"))


def test_both_models_train_and_loss_falls(zoo):
    for kind in KINDS:
        log = zoo.log(kind)
        assert log["steps"] == 24
        losses = [c["train_loss"] for c in log["checkpoints"]]
        assert losses[-1] < losses[0] - 0.5, losses
        assert [c["step"] for c in log["checkpoints"]] == checkpoint_steps(CFG, 24)
        for c in log["checkpoints"]:
            assert (zoo.checkpoints_dir(kind) / c["name"] / "config.json").is_file()
            assert c["tokens"] == c["step"] * CFG.batch_size * CFG.seq_len
            assert set(c["eval"]) == set(CFG.corpus.relations)
    assert zoo.log("moe")["architecture"] == "OlmoeForCausalLM"
    assert zoo.log("dense")["architecture"] == "OlmoForCausalLM"


def test_checkpoints_load_as_mechmoe_models_with_the_recorded_scores(zoo):
    import mechmoe
    from mechmoe.probes import evaluate, summarize

    log = zoo.log("moe")
    last = log["checkpoints"][-1]
    model = mechmoe.load(str(zoo.checkpoints_dir("moe") / last["name"]))
    assert model.dims.n_experts[0] == CFG.n_experts and model.dims.top_k[0] == CFG.top_k
    probe = load_corpus(zoo).probe_set(per_relation=CFG.eval_per_relation)
    # the training record's lean scorer agrees with the library's evaluate()
    summary = summarize(evaluate(model, probe, k=CFG.eval_k, progress=False))
    for rel, scores in last["eval"].items():
        assert scores["hit@10"] == pytest.approx(float(summary["hit"].sel(relation=rel)), abs=1e-9)
        assert scores["mrr"] == pytest.approx(float(summary["mrr"].sel(relation=rel)), abs=1e-6)


def test_sources_parse_the_checkpoint_names(zoo):
    from mechmoe.trajectory.sources import LocalCheckpoints

    found = LocalCheckpoints(zoo.checkpoints_dir("dense")).checkpoints()
    log = zoo.log("dense")["checkpoints"]
    assert [c.step for c in found] == [c["step"] for c in log]
    assert [c.tokens for c in found] == [float(c["tokens"]) for c in log]


def test_second_call_is_cached_and_training_is_deterministic(zoo, tmp_path):
    before = {k: zoo.log(k) for k in KINDS}
    again = pretrain(CFG, root=zoo.root.parent)
    assert again.log("moe") == before["moe"]  # nothing retrained (timings identical)
    other = pretrain(CFG, root=tmp_path, kinds=("moe",))
    assert not other.is_trained("dense")
    a = [c["train_loss"] for c in other.log("moe")["checkpoints"]]
    b = [c["train_loss"] for c in before["moe"]["checkpoints"]]
    assert a == b
    from safetensors.torch import load_file

    name = before["moe"]["checkpoints"][-1]["name"]
    wa = load_file(other.checkpoints_dir("moe") / name / "model.safetensors")
    wb = load_file(zoo.checkpoints_dir("moe") / name / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wb)


def test_side_by_side_workers_give_the_same_weights(zoo, tmp_path):
    # threads=2 trains both models at once in worker processes; the weights must be the
    # ones the in-process run (threads=1) made, since threads is not in the cache digest.
    from dataclasses import replace

    from safetensors.torch import load_file

    side = pretrain(replace(CFG, threads=2), root=tmp_path)
    assert side.root.name == zoo.root.name
    for kind in KINDS:
        mine, theirs = side.log(kind), zoo.log(kind)
        for field in ("train_loss", "eval"):
            assert [c[field] for c in mine["checkpoints"]] == [
                c[field] for c in theirs["checkpoints"]
            ]
        name = theirs["checkpoints"][-1]["name"]
        wa = load_file(side.checkpoints_dir(kind) / name / "model.safetensors")
        wb = load_file(zoo.checkpoints_dir(kind) / name / "model.safetensors")
        assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wb)


def test_a_worker_error_reaches_the_caller(zoo, tmp_path):
    import torch

    from mechmoe.zoo.pretrain import _train_side_by_side

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # the worker cannot create its checkpoints folder here
    blocks = torch.zeros((CFG.batch_size * 2, CFG.seq_len), dtype=torch.long)
    probe = load_corpus(zoo).probe_set(per_relation=2)
    with pytest.raises(NotADirectoryError) as info:
        _train_side_by_side(CFG, ["moe"], blocks, zoo.root / "tokenizer", probe, {"moe": blocker})
    assert any("training the moe model" in note for note in info.value.__notes__)


def test_interrupted_training_leaves_nothing_that_looks_done(tmp_path, monkeypatch):
    import mechmoe.zoo.pretrain as pt

    def boom(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(pt, "train_one", boom)
    with pytest.raises(RuntimeError):
        pretrain(CFG, root=tmp_path)
    zoo = zoo_at(CFG, tmp_path)
    assert not zoo.is_trained("moe")
    assert not zoo.model_dir("moe").exists()
    assert not [p for p in zoo.root.iterdir() if p.name.startswith(".moe")]


def test_matched_active_params():
    cfg = ZooConfig()
    assert cfg.dense_width == cfg.top_k * cfg.expert_width
    moe, dense = active_params(cfg, "moe"), active_params(cfg, "dense")
    # only the router differs
    assert moe - dense == cfg.layers * cfg.hidden * cfg.n_experts
    assert abs(moe - dense) / dense < 0.01


def test_active_params_count_real_modules():
    from transformers import AutoModelForCausalLM

    from mechmoe.zoo.pretrain import model_config

    cfg = tiny_zoo_config()
    for kind in KINDS:
        model = AutoModelForCausalLM.from_config(model_config(cfg, kind, cfg.vocab_size))
        total = 0
        for name, p in model.named_parameters():
            if "norm" in name:
                continue
            n = p.numel()
            if kind == "moe" and ".experts." in name:
                n = n * cfg.top_k // cfg.n_experts
            total += n
        assert total == active_params(cfg, kind)


def test_checkpoint_names_and_steps():
    assert checkpoint_name(7, 14336) == "step7-tokens14.336K"
    assert checkpoint_name(1000, 2048000) == "step1000-tokens2048K"
    steps = checkpoint_steps(ZooConfig(), 437)
    assert 13 <= len(steps) <= 15 and steps[-1] == 437 and steps == sorted(set(steps))
    assert checkpoint_steps(ZooConfig(n_checkpoints=1), 50) == [50]


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MECHMOE_CACHE", str(tmp_path / "m"))
    assert cache_root() == tmp_path / "m"
    monkeypatch.delenv("MECHMOE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "mechmoe"


def test_bad_config():
    with pytest.raises(InvalidInputError, match="top_k"):
        ZooConfig(n_experts=2, top_k=3)
    with pytest.raises(InvalidInputError, match="kind"):
        pretrain(CFG, kinds=("sparse",))
    assert ZooConfig(threads=1).digest == ZooConfig(threads=2).digest
    assert ZooConfig(seed=1).digest != ZooConfig().digest
