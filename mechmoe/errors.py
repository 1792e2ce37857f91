"""User-facing errors.

Everything a user can cause (a wrong path, an unsupported model, a malformed prompt
file) raises a :class:`MechmoeError` with one sentence that says what was wrong and how
to fix it. The CLI prints that sentence and exits with status 2, without a traceback.
"""

from __future__ import annotations


class MechmoeError(Exception):
    """Base class of every error caused by the user's input."""


class UnsupportedArchitectureError(MechmoeError):
    """The model's architecture has no registered adapter."""


class ModelNotFoundError(MechmoeError):
    """A model name, path or revision does not exist."""


class SpecMismatchError(MechmoeError):
    """An adapter spec names a module or parameter the loaded model does not have."""


class InvalidInputError(MechmoeError):
    """Prompts, indices or options that cannot be used as given."""


__all__ = [
    "InvalidInputError",
    "MechmoeError",
    "ModelNotFoundError",
    "SpecMismatchError",
    "UnsupportedArchitectureError",
]
