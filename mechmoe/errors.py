"""mechmoe's error classes, importable as ``mechmoe.errors`` (they live in :mod:`mechmoe.core.errors`)."""

from mechmoe.core.errors import DamagedFileError as DamagedFileError
from mechmoe.core.errors import InvalidInputError as InvalidInputError
from mechmoe.core.errors import InvalidTypeError as InvalidTypeError
from mechmoe.core.errors import MechmoeError as MechmoeError
from mechmoe.core.errors import ModelNotFoundError as ModelNotFoundError
from mechmoe.core.errors import OutputError as OutputError
from mechmoe.core.errors import SpecMismatchError as SpecMismatchError
from mechmoe.core.errors import UnsupportedArchitectureError as UnsupportedArchitectureError

__all__ = [
    "DamagedFileError",
    "InvalidInputError",
    "InvalidTypeError",
    "MechmoeError",
    "ModelNotFoundError",
    "OutputError",
    "SpecMismatchError",
    "UnsupportedArchitectureError",
]
