"""Every script in examples/ runs, on the built-in tiny models (SmolLM2 where marked)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name: str) -> dict:
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")


def test_every_example_is_run_here():
    tested = {"compose_interventions", "hooks_backend", "top_neurons", "trajectory_local"}
    # hooks_backend is a backend, imported and checked by tests/test_backend_seam.py
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_compose_interventions(capsys):
    _example("compose_interventions")["main"]("tiny:olmoe")
    assert capsys.readouterr().out.strip()


def test_top_neurons_promote_what_their_columns_write():
    import torch

    import mechmoe

    rows = _example("top_neurons")["main"]("tiny:olmoe", 4)
    assert len(rows) == 8 and rows == sorted(rows, key=lambda r: -r["score"])
    # an independent reading of the first row: the column times the norm weight, unembedded
    model = mechmoe.load("tiny:olmoe")
    first = rows[0]
    layer = model.layer(first["layer"])
    down = layer.mlp.experts.down_proj[first["expert"], :, first["neuron"]]
    logits = model.hf.lm_head.weight @ (down * model.hf.model.norm.weight)
    expected = [model.tokenizer.decode([int(t)]) for t in torch.topk(logits, 5).indices]
    assert first["promotes"] == expected


@pytest.mark.real_weights
def test_top_neurons_on_smollm2():
    rows = _example("top_neurons")["main"]("smollm2", 2)
    assert len(rows) == 8 and all(r["expert"] == 0 for r in rows)


def test_trajectory_local_resumes_and_draws(tmp_path, capsys):
    main = _example("trajectory_local")["main"]
    figure = main(str(tmp_path))
    assert "computed [100, 200, 400]" in capsys.readouterr().out
    assert figure.stat().st_size > 10_000
    main(str(tmp_path))
    assert "already stored [100, 200, 400]" in capsys.readouterr().out
