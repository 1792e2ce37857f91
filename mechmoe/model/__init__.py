"""The model handle (:mod:`mechmoe.model.handle`), how handles are built
(:mod:`mechmoe.model.loading`), the options they are built with
(:mod:`mechmoe.model.options`) and the named model sources (:mod:`mechmoe.model.sources`)."""

from mechmoe.core.types import FFNWeights as FFNWeights
from mechmoe.core.types import ModelDims as ModelDims
from mechmoe.core.types import NormParams as NormParams
from mechmoe.model.handle import Model as Model
from mechmoe.model.handle import architecture_of as architecture_of
from mechmoe.model.loading import load as load
from mechmoe.model.loading import quiet_hf_progress as quiet_hf_progress
from mechmoe.model.loading import wrap as wrap
from mechmoe.model.options import LoadKeywords as LoadKeywords
from mechmoe.model.options import LoadOptions as LoadOptions
from mechmoe.model.sources import available_sources as available_sources
from mechmoe.model.sources import get_source as get_source
from mechmoe.model.sources import list_sources as list_sources
from mechmoe.model.sources import register_source as register_source
from mechmoe.model.sources import unregister_source as unregister_source

__all__ = [
    "FFNWeights",
    "LoadKeywords",
    "LoadOptions",
    "Model",
    "ModelDims",
    "NormParams",
    "architecture_of",
    "available_sources",
    "get_source",
    "list_sources",
    "load",
    "quiet_hf_progress",
    "register_source",
    "unregister_source",
    "wrap",
]
