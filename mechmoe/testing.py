"""Test and documentation fixtures: tiny models, hub-like folders, small files.

The tiny random-weight models and SmolLM2 live in the zoo (:mod:`mechmoe.zoo.tiny`,
:mod:`mechmoe.zoo.smollm2`) and are re-exported here for tests, docs and examples;
production code never imports this module. Nothing here downloads anything.

Examples
--------
>>> from mechmoe.testing import tiny_model
>>> model = tiny_model("olmoe")
>>> model.dims.n_layers, model.dims.n_experts[0], model.dims.top_k[0]
(2, 8, 2)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from mechmoe.ops.conformance import DEFAULT_PROMPTS as DEFAULT_PROMPTS
from mechmoe.zoo.smollm2 import smollm2_gguf as smollm2_gguf
from mechmoe.zoo.tiny import CORPUS as CORPUS
from mechmoe.zoo.tiny import MOE_FAMILIES as MOE_FAMILIES
from mechmoe.zoo.tiny import TINY_FAMILIES as TINY_FAMILIES
from mechmoe.zoo.tiny import save_tiny as save_tiny
from mechmoe.zoo.tiny import tiny_hf_model as tiny_hf_model
from mechmoe.zoo.tiny import tiny_model as tiny_model
from mechmoe.zoo.tiny import tiny_tokenizer as tiny_tokenizer
from mechmoe.zoo.tokenizers import BOS as BOS
from mechmoe.zoo.tokenizers import EOS as EOS
from mechmoe.zoo.tokenizers import PAD as PAD


def make_hub_cache(cache_dir: str | Path, repo_id: str, revisions: dict[str, Path | str]) -> Path:
    """Lay out ``revisions`` (branch name → model folder) as an HF hub cache.

    With ``HF_HUB_CACHE=cache_dir`` and ``HF_HUB_OFFLINE=1``, ``from_pretrained(repo_id,
    revision=branch)`` then resolves each branch exactly as it would for a downloaded
    repo, so revision handling is tested without a network.
    """
    cache_dir = Path(cache_dir)
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for branch, folder in revisions.items():
        commit = hashlib.sha1(f"{repo_id}@{branch}".encode()).hexdigest()
        snap = repo / "snapshots" / commit
        if snap.exists():
            shutil.rmtree(snap)
        shutil.copytree(folder, snap)
        (repo / "refs" / branch).write_text(commit)
    return repo


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps(obj, indent=2))
    return path


__all__ = [
    "BOS",
    "CORPUS",
    "DEFAULT_PROMPTS",
    "EOS",
    "MOE_FAMILIES",
    "PAD",
    "TINY_FAMILIES",
    "make_hub_cache",
    "save_tiny",
    "smollm2_gguf",
    "tiny_hf_model",
    "tiny_model",
    "tiny_tokenizer",
    "write_json",
]
