"""Model-family adapters: declarative specs and the registry that finds them."""

from mechmoe.adapters.registry import get_adapter as get_adapter
from mechmoe.adapters.registry import list_adapters as list_adapters
from mechmoe.adapters.registry import register_adapter as register_adapter
from mechmoe.adapters.registry import supported_architectures as supported_architectures
from mechmoe.adapters.registry import unregister_adapter as unregister_adapter
from mechmoe.adapters.routing import RoutingRule as RoutingRule
from mechmoe.adapters.routing import reroute as reroute
from mechmoe.adapters.routing import route as route
from mechmoe.adapters.routing import routing_rule as routing_rule
from mechmoe.adapters.spec import AdapterSpec as AdapterSpec
from mechmoe.adapters.spec import DenseMLPSpec as DenseMLPSpec
from mechmoe.adapters.spec import Factor as Factor
from mechmoe.adapters.spec import GLUSpec as GLUSpec
from mechmoe.adapters.spec import GroupSpec as GroupSpec
from mechmoe.adapters.spec import LayerSchedule as LayerSchedule
from mechmoe.adapters.spec import MoESpec as MoESpec
from mechmoe.adapters.spec import NormSpec as NormSpec
from mechmoe.adapters.spec import RouterSpec as RouterSpec

__all__ = [
    "AdapterSpec",
    "DenseMLPSpec",
    "Factor",
    "GLUSpec",
    "GroupSpec",
    "LayerSchedule",
    "MoESpec",
    "NormSpec",
    "RouterSpec",
    "RoutingRule",
    "get_adapter",
    "list_adapters",
    "register_adapter",
    "reroute",
    "route",
    "routing_rule",
    "supported_architectures",
    "unregister_adapter",
]
