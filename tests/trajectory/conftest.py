from __future__ import annotations

from pathlib import Path

import pytest


def build_checkpoints(
    root: Path,
    steps: tuple[int, ...] = (100, 200, 300),
    *,
    family: str = "olmoe",
    same_as: dict[int, int] | None = None,
) -> list[Path]:
    """Tiny checkpoints ``root/step_{step:06d}``: one base model drifting with the step.

    ``same_as={300: 200}`` saves step 300 with exactly step 200's weights.
    """
    import torch

    from mechmoe.testing import tiny_hf_model, tiny_tokenizer

    same_as = same_as or {}
    folders = []
    for step in steps:
        src = same_as.get(step, step)
        model = tiny_hf_model(family, seed=0)
        gen = torch.Generator().manual_seed(src)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * (src / 100) * torch.randn(p.shape, generator=gen) * p.std())
        folder = root / f"step_{step:06d}"
        model.save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture(scope="session")
def checkpoint_builder():
    return build_checkpoints


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> list[Path]:
    """Three tiny OLMoE checkpoints (steps 100, 200, 300), built once per session."""
    return build_checkpoints(tmp_path_factory.mktemp("ckpts"))
