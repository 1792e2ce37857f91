"""Checks of user-given options, shared by every public entry point and the CLI.

:func:`check_choice` is the one check of an option that takes one of a few words (the
``Literal`` types of :mod:`mechmoe._types`): a wrong word is an
:class:`~mechmoe.core.errors.InvalidInputError` naming the allowed ones and the closest,
a value that is not a string an :class:`~mechmoe.core.errors.InvalidTypeError`.

:func:`entry_point` marks a public function that checks its own arguments this way.
The test suite runs every mechmoe function under a runtime type checker (pytest's
``--jaxtyping-packages=mechmoe,beartype.beartype``), which would reject
``attribute(model, prompts, level=3)`` with its own error before the function's check
ran, so tests would exercise an error users never see. The mark makes the checker leave
that one function's arguments to the function; everything it calls is still checked.

Examples
--------
>>> from mechmoe._types import Target
>>> check_choice("gold", Target, name="target")
'gold'
>>> check_choice("glod", Target, name="target")
Traceback (most recent call last):
...
mechmoe.core.errors.InvalidInputError: target='glod': use one of 'top1', 'gold' (did you mean 'gold'?)
>>> check_choice("glod", Target, name="--target")
Traceback (most recent call last):
...
mechmoe.core.errors.InvalidInputError: --target 'glod': use one of top1, gold (did you mean 'gold'?)
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar, get_args, get_origin

from mechmoe.core.errors import InvalidInputError, InvalidTypeError

F = TypeVar("F", bound=Callable[..., Any])


def choice_values(choices: Any) -> tuple[str, ...]:
    """The words of a ``Literal`` type (nested ones flattened) or of a sequence of strings."""
    if get_origin(choices) is Literal:
        out: list[str] = []
        for arg in get_args(choices):
            out.extend(choice_values(arg) if get_origin(arg) is Literal else [arg])
        return tuple(dict.fromkeys(out))
    if isinstance(choices, str):
        return (choices,)
    return tuple(dict.fromkeys(choices))


def closest(value: str, known: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The known word closest to ``value`` (case ignored), or ``None`` if none is close.

    ``cutoff`` is difflib's similarity ratio; short option names (``kz`` for ``ks``) need
    a lower one than model names.
    """
    known = list(known)
    folded = {k.casefold(): k for k in known}
    if value.casefold() in folded:
        return folded[value.casefold()]
    close = difflib.get_close_matches(value.casefold(), list(folded), n=1, cutoff=cutoff)
    return folded[close[0]] if close else None


def _label(name: str, value: Any) -> str:
    # A command-line option reads as it was typed (--level 'x'), a keyword as a call (level='x').
    return f"{name} {value!r}" if name.startswith("-") else f"{name}={value!r}"


def _listed(name: str, words: tuple[str, ...]) -> str:
    return ", ".join(words) if name.startswith("-") else ", ".join(map(repr, words))


def check_choice(value: Any, choices: Any, *, name: str, where: str = "", note: str = "") -> str:
    """``value`` if it is one of ``choices``; otherwise one clear error.

    Parameters
    ----------
    value
        What the user gave.
    choices
        A ``Literal`` type (see :mod:`mechmoe._types`) or a sequence of strings.
    name
        The option's name as the user wrote it: ``"level"`` for a keyword argument,
        ``"--level"`` for a command-line option (the message then reads as typed).
    where
        What the option belongs to, put first (``"measure 'hit'"``).
    note
        A reason appended to the message (why the other values are refused).

    Raises
    ------
    InvalidTypeError
        ``value`` is not a string.
    InvalidInputError
        ``value`` is not one of the choices; the message lists them and, when one is
        close (a typo, another case), asks "did you mean".
    """
    words = choice_values(choices)
    prefix = f"{where}: " if where else ""
    if not isinstance(value, str):
        what = name if name.startswith("-") else f"{name}="
        raise InvalidTypeError(
            f"{prefix}{what} takes one of {_listed(name, words)}, got "
            f"{type(value).__name__} {value!r}"
        )
    if value in words:
        return value
    near = closest(value, words)
    hint = f" (did you mean {near!r}?)" if near is not None else ""
    tail = f"; {note}" if note else ""
    raise InvalidInputError(
        f"{prefix}{_label(name, value)}: use one of {_listed(name, words)}{hint}{tail}"
    )


def check_number(
    value: Any,
    *,
    name: str,
    integer: bool = False,
    minimum: int | float | None = None,
    positive: bool = False,
    where: str = "",
) -> Any:
    """``value`` if it is a real (or, with ``integer``, a whole) number in range.

    ``bool`` is not a number here. ``minimum`` is inclusive, ``positive`` excludes 0;
    NaN and infinities are refused.

    Raises
    ------
    InvalidTypeError
        Not a number (or not an integer where one is needed).
    InvalidInputError
        Out of range, or not finite.
    """
    prefix = f"{where}: " if where else ""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        noun = "an integer" if integer else "a number"
        raise InvalidTypeError(
            f"{prefix}{name}= takes {noun}, got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(value):
        raise InvalidInputError(f"{prefix}{name}={value!r} must be a finite number")
    if positive and not value > 0:
        raise InvalidInputError(f"{prefix}{name}={value!r} must be positive")
    if minimum is not None and value < minimum:
        raise InvalidInputError(f"{prefix}{name}={value!r} must be at least {minimum:g}")
    return value


def entry_point(fn: F) -> F:
    """Mark ``fn`` as a public entry point that checks its own arguments.

    Such a function checks each option with :func:`check_choice` / :func:`check_number`
    (or its own checks) before it passes them to annotated internals, and raises
    mechmoe's errors. The mark (``__no_type_check__``, which the test-time type checker
    honours) leaves ``fn``'s own arguments to those checks; the annotations stay, for
    readers and static type checkers, and every function ``fn`` calls is still checked.
    """
    fn.__no_type_check__ = True  # type: ignore[attr-defined]
    return fn


__all__ = ["check_choice", "check_number", "choice_values", "closest", "entry_point"]
