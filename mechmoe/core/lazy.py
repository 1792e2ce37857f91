"""Names a module exports but imports only when first used (:func:`lazy_getattr`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(module: str, where: Mapping[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for names a module exports but imports on first
    use: ``name`` resolves to ``getattr(import(where[name][0]), where[name][1])`` on every
    access (so replacing it in its home module, as a test's monkeypatch does, is seen);
    other names raise ``AttributeError`` as usual.

    ``mechmoe.model`` and ``mechmoe.trajectory.measures`` (the built-in measure classes)
    use it; ``mechmoe`` itself has its own copy of these few lines, so that
    ``import mechmoe`` imports no module more than it must.
    """

    def __getattr__(name: str) -> Any:
        if name in where:
            home, attr = where[name]
            return getattr(importlib.import_module(home), attr)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


__all__ = ["lazy_getattr"]
