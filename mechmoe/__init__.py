"""mechmoe: where MoE and dense language models keep what they know.

The public API is small: :func:`load` a model into a :class:`Model`, run
:meth:`Model.capture`, check adapters with :func:`check_model`, and register new families
with :func:`register_adapter`. Heavy libraries (torch, transformers, nnsight) are
imported on first use so ``import mechmoe`` and ``mechmoe --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mechmoe.adapters import AdapterSpec as AdapterSpec
    from mechmoe.adapters import register_adapter as register_adapter
    from mechmoe.model import Model as Model
    from mechmoe.model import load as load
    from mechmoe.ops.conformance import check_model as check_model

_LAZY = {
    "load": "mechmoe.model",
    "Model": "mechmoe.model",
    "AdapterSpec": "mechmoe.adapters",
    "register_adapter": "mechmoe.adapters",
    "get_adapter": "mechmoe.adapters",
    "check_model": "mechmoe.ops.conformance",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mechmoe' has no attribute {name!r}")


__all__ = [
    "AdapterSpec",
    "Model",
    "__version__",
    "check_model",
    "get_adapter",
    "load",
    "register_adapter",
]
