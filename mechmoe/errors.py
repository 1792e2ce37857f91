"""mechmoe's error classes, for users: ``from mechmoe.errors import MechmoeError``.

This is the public path to them; they live in :mod:`mechmoe.core.errors` (the bottom
layer, so every layer can raise them), and this module re-exports exactly that module's
``__all__``. mechmoe's own modules import :mod:`mechmoe.core.errors` (a contract in
``pyproject.toml`` keeps this alias out of them).
"""

from mechmoe.core import errors as _errors
from mechmoe.core.errors import *  # noqa: F403

__all__ = list(_errors.__all__)
