"""Dimension names, tensor aliases and option types shared across mechmoe.

Every labeled result uses these dim names, so results from different operations line
up when combined with xarray.

Every option that takes one of a few words is a ``Literal`` here, once: the public
functions annotate with it, :func:`mechmoe.core.checks.check_choice` checks a value
against it (one error, with the allowed values and a "did you mean"), and the CLI builds
its choices from it, so ``--help`` lists them. A new option value is one edit here.
"""

from __future__ import annotations

from typing import Literal

PROMPT = "prompt"
POSITION = "position"
LAYER = "layer"
HEAD = "head"
#: The attention / FFN sub-layer of a layer (attribution's ``level="layer"``).
SUBLAYER = "sublayer"
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
#: Which tokens a capture keeps (a list of token indices is the third form).
Positions = Literal["last", "all"]
LayerKind = Literal["moe", "dense"]
#: A layer's token mixer: attention (with heads) or a recurrent mixer without heads
#: (Mamba, linear attention, short convolutions in hybrid stacks).
MixerKind = Literal["attention", "recurrent"]

# ---- options (checked by mechmoe.core.checks.check_choice) -------------------------------
#: Attribution levels (docs/attribution.md); "layer" is "attn" and "ffn" side by side.
Level = Literal["neuron", "expert", "head", "attn", "ffn", "layer"]
#: The token attribution explains: the model's own top prediction, or the gold object's.
Target = Literal["top1", "gold"]
#: How the LPI's softmax is summed: exactly, or within a proven tolerance ("certified";
#: "bounded" is its old name, kept so stored sweep configs still read).
Precision = Literal["exact", "certified", "bounded"]
#: How a masked attention head is replaced: by zero, or by its mean over the probe.
MaskMode = Literal["zero", "mean"]
#: Where a sweep runs its checkpoints: in this process, or on Dask workers.
Executor = Literal["local", "dask"]
#: The two models of the miniature zoo.
ModelKind = Literal["moe", "dense"]
#: How transformers runs fused experts; both give identical results ("batched_mm" does not).
ExpertsImplementation = Literal["eager", "grouped_mm"]
#: The step router saturation is compared with (a step number is the third form).
SaturationReference = Literal["final", "previous"]
#: How expert co-activation counts are normalised.
CoactivationNorm = Literal["conditional", "count"]
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
    "SUBLAYER",
    "TOKEN",
    "VOCAB",
    "DEFAULT_BACKEND",
    "CoactivationNorm",
    "Executor",
    "ExpertsImplementation",
    "LayerKind",
    "Level",
    "MaskMode",
    "ModelKind",
    "NormKind",
    "Positions",
    "Precision",
    "SaturationReference",
    "Target",
    "WeightLayout",
]
