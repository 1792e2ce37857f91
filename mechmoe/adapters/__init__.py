"""Model-family adapters: declarative specs and the registry that finds them."""

from mechmoe.adapters.registry import get_adapter as get_adapter
from mechmoe.adapters.registry import list_adapters as list_adapters
from mechmoe.adapters.registry import register_adapter as register_adapter
from mechmoe.adapters.registry import supported_architectures as supported_architectures
from mechmoe.adapters.registry import unregister_adapter as unregister_adapter
from mechmoe.adapters.spec import AdapterSpec as AdapterSpec
from mechmoe.adapters.spec import DenseMLPSpec as DenseMLPSpec
from mechmoe.adapters.spec import MoESpec as MoESpec
from mechmoe.adapters.spec import NormSpec as NormSpec

__all__ = [
    "AdapterSpec",
    "DenseMLPSpec",
    "MoESpec",
    "NormSpec",
    "get_adapter",
    "list_adapters",
    "register_adapter",
    "supported_architectures",
    "unregister_adapter",
]
