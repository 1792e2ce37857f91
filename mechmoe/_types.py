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
# trajectory store (see the store layout in docs/trajectories.md)
K = "k"
N_MASKED = "n"
SEED = "seed"
TOKEN = "token"
EXPERT_B = "expert_b"
# statistics (mechmoe.analysis): backbone fraction, Lorenz population share, compared runs
QUANTILE = "q"
POPULATION = "population"
RUN = "run"

NormKind = Literal["rmsnorm", "layernorm"]
WeightLayout = Literal["linear", "conv1d"]
Positions = Literal["last", "all"]
LayerKind = Literal["moe", "dense"]
#: A layer's token mixer: attention (with heads) or a recurrent mixer without heads
#: (Mamba, linear attention, short convolutions in hybrid stacks).
MixerKind = Literal["attention", "recurrent"]
#: The capture backend used when none is named (``load(..., backend=...)``, ``--backend``).
DEFAULT_BACKEND = "nnsight"

__all__ = [
    "D_MODEL",
    "EXPERT",
    "EXPERT_B",
    "HEAD",
    "IDENTITY",
    "ITEM",
    "K",
    "LAYER",
    "N_MASKED",
    "NEURON",
    "POPULATION",
    "POSITION",
    "PROMPT",
    "QUANTILE",
    "RELATION",
    "RUN",
    "SEED",
    "SLOT",
    "STEP",
    "TOKEN",
    "VOCAB",
    "DEFAULT_BACKEND",
    "LayerKind",
    "NormKind",
    "Positions",
    "WeightLayout",
]
