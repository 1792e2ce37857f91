"""Names a module exports but imports only when first used.

``mechmoe`` (the public API), ``mechmoe.model`` and ``mechmoe.trajectory.measures`` (the
built-in measure classes) re-export names whose modules are slow to import (torch) or
are imported on demand; each sets ``__getattr__ = lazy_getattr(__name__, where)``
(PEP 562). A name is looked up in its module on every access, so replacing it there (a
test's monkeypatch) is seen here too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(module: str, where: Mapping[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``name`` to ``getattr(import(where[name][0]),
    where[name][1])``; other names raise ``AttributeError`` as usual."""

    def __getattr__(name: str) -> Any:
        if name in where:
            home, attr = where[name]
            return getattr(importlib.import_module(home), attr)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


__all__ = ["lazy_getattr"]
