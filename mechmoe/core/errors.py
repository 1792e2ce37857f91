"""User-facing errors.

Everything a user can cause (a wrong path, an unsupported model, a malformed prompt
file) raises a :class:`MechmoeError` with one sentence that says what was wrong and how
to fix it. The CLI prints that sentence and exits with status 2, without a traceback.
"""

from __future__ import annotations


class MechmoeError(Exception):
    """Base class of every error caused by the user's input."""


class ModelNotFoundError(MechmoeError):
    """A model name, path or revision does not exist."""


class SpecMismatchError(MechmoeError):
    """An adapter spec names a module or parameter the loaded model does not have."""


class InvalidInputError(MechmoeError):
    """Prompts, indices or options that cannot be used as given."""


class DamagedFileError(InvalidInputError):
    """A model, tokenizer or config file that exists but cannot be used as it is.

    Truncated or garbage weights, a file named ``.gguf`` that is not one, a config whose
    values contradict each other, an unreadable ``tokenizer.json``.
    """


class InvalidTypeError(InvalidInputError, TypeError):
    """A Python argument of the wrong type (also a :class:`TypeError`)."""


class RegistryError(InvalidInputError):
    """A name that cannot be registered or looked up in one of mechmoe's registries
    (adapters, backends, model sources, measures; :mod:`mechmoe.core.registry`), or what a
    name leads to cannot be used."""


class UnknownNameError(RegistryError, LookupError):
    """No entry of that name; the message suggests the closest known one."""


class UnsupportedArchitectureError(UnknownNameError):
    """The model's architecture has no registered adapter."""


class UnknownSourceError(UnknownNameError, ModelNotFoundError):
    """``load("NAME:…")`` names no model source (also a :class:`ModelNotFoundError`)."""


class DuplicateNameError(RegistryError, ValueError):
    """A name already taken; registering it again needs ``replace=True``."""


class InvalidNameError(RegistryError, ValueError):
    """A name a registry cannot hold (e.g. a measure name that is not an identifier)."""


class RegistryTypeError(RegistryError, InvalidTypeError):
    """What was registered, or what a name leads to, is not of the kind the registry
    holds (also a :class:`TypeError`)."""


class MissingDependencyError(RegistryError):
    """A registered entry needs a library that is not installed; the message says how
    to install it."""


class HubError(ModelNotFoundError):
    """The hub (or the mirror ``HF_ENDPOINT`` names) was reached but answered with an
    error (a server error, a proxy, an answer that is not the hub's); also a
    :class:`ModelNotFoundError`. The message says whether the local cache can stand in.
    """


class NonFiniteError(InvalidInputError):
    """A forward pass whose activations become NaN or infinite (an overflow in float16, a
    numerically broken checkpoint): every number computed from it would be garbage. The
    message names the first layer where they appear. NaN or infinite *weights* are
    refused when the model loads (:class:`DamagedFileError`).

    ``where`` names the place (``"layer 1 (FFN)"``), when known.
    """

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(message)
        self.where = where


class OutputError(InvalidInputError):
    """An output path that cannot be written safely, or a write that failed (disk full).

    Raised before any work starts when the destination is unusable (missing or
    unwritable folder, a file where a folder should go, something mechmoe did not
    write), and after a failed write, which leaves nothing behind.
    """


__all__ = [
    "DamagedFileError",
    "DuplicateNameError",
    "HubError",
    "InvalidInputError",
    "InvalidNameError",
    "InvalidTypeError",
    "MechmoeError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "NonFiniteError",
    "OutputError",
    "RegistryError",
    "RegistryTypeError",
    "SpecMismatchError",
    "UnknownNameError",
    "UnknownSourceError",
    "UnsupportedArchitectureError",
]
