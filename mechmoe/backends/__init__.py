"""Backends: how a capture pass and its edits reach a model.

:mod:`mechmoe.backends.base` holds the interface every backend implements and the
registry that picks one by name; each other module here is one backend and the only
place that imports its library (nnsight, TransformerLens).
"""

from mechmoe.backends.base import Backend as Backend
from mechmoe.backends.base import RawCapture as RawCapture
from mechmoe.backends.base import RawLayer as RawLayer
from mechmoe.backends.base import available_backends as available_backends
from mechmoe.backends.base import backend_for_native as backend_for_native
from mechmoe.backends.base import get_backend as get_backend
from mechmoe.backends.base import list_backends as list_backends
from mechmoe.backends.base import register_backend as register_backend
from mechmoe.backends.base import unregister_backend as unregister_backend

__all__ = [
    "Backend",
    "RawCapture",
    "RawLayer",
    "available_backends",
    "backend_for_native",
    "get_backend",
    "list_backends",
    "register_backend",
    "unregister_backend",
]
