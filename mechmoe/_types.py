"""Dimension names, tensor aliases and option types shared across mechmoe.

Every labeled result uses these dim names, so results from different operations line
up when combined with xarray.
"""

from __future__ import annotations

from typing import Literal

PROMPT = "prompt"
POSITION = "position"
LAYER = "layer"
HEAD = "head"
EXPERT = "expert"
SLOT = "slot"
NEURON = "neuron"
STEP = "step"
VOCAB = "vocab"
D_MODEL = "d_model"
IDENTITY = "identity"
RELATION = "relation"
ITEM = "item"

NormKind = Literal["rmsnorm", "layernorm"]
WeightLayout = Literal["linear", "conv1d"]
Positions = Literal["last", "all"]
LayerKind = Literal["moe", "dense"]
Backend = Literal["nnsight"]

__all__ = [
    "D_MODEL",
    "EXPERT",
    "HEAD",
    "IDENTITY",
    "ITEM",
    "LAYER",
    "NEURON",
    "POSITION",
    "PROMPT",
    "RELATION",
    "SLOT",
    "STEP",
    "VOCAB",
    "Backend",
    "LayerKind",
    "NormKind",
    "Positions",
    "WeightLayout",
]
