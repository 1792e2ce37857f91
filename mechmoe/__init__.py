"""mechmoe: where MoE and dense language models keep what they know.

The public API, in the order of a study: :func:`load` (or :func:`wrap` a TransformerLens
bridge) a model into a :class:`Model`; measure it (:func:`attribute`, :func:`evaluate`,
:func:`head_robustness`) with or without interventions (:class:`MaskHeads`,
:class:`BanExperts`, … composed with ``+``); run measures over training checkpoints
(:func:`sweep`, :func:`open_store`); summarise (:func:`summarize_run`) and report
(:func:`build_report`). Extension points, one registry each with the same verbs
(``list_*``, ``get_*``, ``register_*``; :mod:`mechmoe.core.registry`): adapters (a model
family, :func:`register_adapter`), backends (:func:`register_backend`), model sources
(:func:`register_source`) and measures (:func:`register_measure`); and
:class:`RoutingEdit` (a routing intervention that merges and is checked with the others).
How a model is loaded is one value, :class:`LoadOptions`, passed whole wherever models
are loaded.

Everything here is a re-export, so modules can move without breaking users. Heavy
libraries (torch, transformers, nnsight, TransformerLens) are imported on first use, so
``import mechmoe`` and ``mechmoe --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mechmoe._version import __version__ as __version__
from mechmoe.core import threads as _threads

# Before torch loads: OpenMP threads spin briefly, then sleep (mechmoe/core/threads.py).
_threads.configure_openmp()

if TYPE_CHECKING:
    from mechmoe.adapters import AdapterSpec as AdapterSpec
    from mechmoe.adapters import get_adapter as get_adapter
    from mechmoe.adapters import list_adapters as list_adapters
    from mechmoe.adapters import register_adapter as register_adapter
    from mechmoe.analysis import summarize_run as summarize_run
    from mechmoe.backends import available_backends as available_backends
    from mechmoe.backends import get_backend as get_backend
    from mechmoe.backends import list_backends as list_backends
    from mechmoe.backends import register_backend as register_backend
    from mechmoe.core.interventions import BanExperts as BanExperts
    from mechmoe.core.interventions import ForceExperts as ForceExperts
    from mechmoe.core.interventions import MaskHeads as MaskHeads
    from mechmoe.core.interventions import Plan as Plan
    from mechmoe.core.interventions import RoutingEdit as RoutingEdit
    from mechmoe.core.interventions import RoutingRequest as RoutingRequest
    from mechmoe.core.interventions import ScaleGates as ScaleGates
    from mechmoe.core.interventions import ScaleNeurons as ScaleNeurons
    from mechmoe.core.interventions import SetTopK as SetTopK
    from mechmoe.core.interventions import ZeroExperts as ZeroExperts
    from mechmoe.core.interventions import ZeroNeurons as ZeroNeurons
    from mechmoe.core.interventions import compose as compose
    from mechmoe.model import LoadOptions as LoadOptions
    from mechmoe.model import Model as Model
    from mechmoe.model import get_source as get_source
    from mechmoe.model import list_sources as list_sources
    from mechmoe.model import load as load
    from mechmoe.model import register_source as register_source
    from mechmoe.model import wrap as wrap
    from mechmoe.ops.attribution import attribute as attribute
    from mechmoe.ops.conformance import check_model as check_model
    from mechmoe.ops.results import open_result as open_result
    from mechmoe.ops.results import save_result as save_result
    from mechmoe.ops.robustness import head_robustness as head_robustness
    from mechmoe.probes import ProbeSet as ProbeSet
    from mechmoe.probes import evaluate as evaluate
    from mechmoe.probes import load_probe as load_probe
    from mechmoe.probes import read_prompts as read_prompts
    from mechmoe.report import build_report as build_report
    from mechmoe.trajectory import HubRevisions as HubRevisions
    from mechmoe.trajectory import LocalCheckpoints as LocalCheckpoints
    from mechmoe.trajectory import get_measure as get_measure
    from mechmoe.trajectory import list_measures as list_measures
    from mechmoe.trajectory import open_store as open_store
    from mechmoe.trajectory import register_measure as register_measure
    from mechmoe.trajectory import sweep as sweep

# public name -> (module, name there)
_LAZY: dict[str, tuple[str, str]] = {
    "load": ("mechmoe.model", "load"),
    "Model": ("mechmoe.model", "Model"),
    "LoadOptions": ("mechmoe.model.options", "LoadOptions"),
    "register_source": ("mechmoe.model", "register_source"),
    "get_source": ("mechmoe.model", "get_source"),
    "list_sources": ("mechmoe.model", "list_sources"),
    "wrap": ("mechmoe.model", "wrap"),
    "register_backend": ("mechmoe.backends", "register_backend"),
    "get_backend": ("mechmoe.backends", "get_backend"),
    "list_backends": ("mechmoe.backends", "list_backends"),
    "available_backends": ("mechmoe.backends", "available_backends"),  # deprecated
    "AdapterSpec": ("mechmoe.adapters", "AdapterSpec"),
    "register_adapter": ("mechmoe.adapters", "register_adapter"),
    "get_adapter": ("mechmoe.adapters", "get_adapter"),
    "list_adapters": ("mechmoe.adapters", "list_adapters"),
    "check_model": ("mechmoe.ops.conformance", "check_model"),
    "attribute": ("mechmoe.ops.attribution", "attribute"),
    "save_result": ("mechmoe.ops.results", "save_result"),
    "open_result": ("mechmoe.ops.results", "open_result"),
    "head_robustness": ("mechmoe.ops.robustness", "head_robustness"),
    "ProbeSet": ("mechmoe.probes", "ProbeSet"),
    "evaluate": ("mechmoe.probes", "evaluate"),
    "load_probe": ("mechmoe.probes", "load_probe"),
    "read_prompts": ("mechmoe.probes", "read_prompts"),
    "sweep": ("mechmoe.trajectory", "sweep"),
    "open_store": ("mechmoe.trajectory", "open_store"),
    "register_measure": ("mechmoe.trajectory", "register_measure"),
    "get_measure": ("mechmoe.trajectory", "get_measure"),
    "list_measures": ("mechmoe.trajectory", "list_measures"),
    "HubRevisions": ("mechmoe.trajectory", "HubRevisions"),
    "LocalCheckpoints": ("mechmoe.trajectory", "LocalCheckpoints"),
    "summarize_run": ("mechmoe.analysis", "summarize_run"),
    "build_report": ("mechmoe.report", "build_report"),
    **{
        name: ("mechmoe.core.interventions", name)
        # the values by family (heads, routing, neurons), then how they combine
        for name in (
            "MaskHeads",
            "BanExperts",
            "ForceExperts",
            "SetTopK",
            "ScaleGates",
            "ZeroExperts",
            "RoutingEdit",
            "RoutingRequest",
            "ScaleNeurons",
            "ZeroNeurons",
            "Plan",
            "compose",
        )
    },
}


def __getattr__(name: str) -> Any:
    # mechmoe.core.lazy.lazy_getattr, inlined: importing it would cost `import mechmoe` a module
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'mechmoe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AdapterSpec",
    "BanExperts",
    "ForceExperts",
    "HubRevisions",
    "LoadOptions",
    "LocalCheckpoints",
    "MaskHeads",
    "Model",
    "Plan",
    "ProbeSet",
    "RoutingEdit",
    "RoutingRequest",
    "ScaleGates",
    "ScaleNeurons",
    "SetTopK",
    "ZeroExperts",
    "ZeroNeurons",
    "__version__",
    "attribute",
    "available_backends",
    "build_report",
    "check_model",
    "compose",
    "evaluate",
    "get_adapter",
    "get_backend",
    "get_measure",
    "get_source",
    "head_robustness",
    "list_adapters",
    "list_backends",
    "list_measures",
    "list_sources",
    "load",
    "load_probe",
    "open_result",
    "open_store",
    "read_prompts",
    "register_adapter",
    "register_backend",
    "register_measure",
    "register_source",
    "save_result",
    "summarize_run",
    "sweep",
    "wrap",
]
