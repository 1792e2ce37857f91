"""What commands read: probe sets and prompt files, with the loader's notes on stderr.

The readers themselves are :func:`mechmoe.probes.load_probe` and
:func:`mechmoe.probes.read_prompts`; here what they changed while reading (duplicate
pairs collapsed, subjects merged into multi-object items) is printed as one ``note:``
line per relation instead of a Python warning. :func:`relation_options` is the option
group of the commands that score relations (``--relations``, ``--template``,
``--limit``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from inspect import Parameter
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mechmoe.cli._common import err_console, option_group
from mechmoe.probes import ProbeSet, PromptFile, load_probe, read_prompts

F = TypeVar("F", bound=Callable[..., Any])
#: The relation the recall commands (probe, mask-heads) score when none is named.
DEFAULT_RELATION = "country_capital_city"


@contextmanager
def _notes_not_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the same facts are in meta.notes
        yield


def _print_notes(probe: ProbeSet) -> None:
    for meta in probe.relations:
        for note in meta.notes:
            err_console.print(f"note: {meta.name}: {note}", highlight=False, soft_wrap=True)


def load_probe_noting(spec: str, *, template: int = 0, limit: int | None = None) -> ProbeSet:
    """``load_probe(spec)`` (the first ``limit`` items of each relation), notes on stderr."""
    with _notes_not_warnings():
        probe = load_probe(spec, template=template)
    _print_notes(probe)
    return probe if limit is None else probe.head(limit, per_relation=True)


def read_prompts_noting(path: Path, *, template: int = 0, limit: int | None = None) -> PromptFile:
    """``read_prompts(path)`` (the first ``limit`` prompts), a relation's notes on stderr."""
    with _notes_not_warnings():
        prompts = read_prompts(path, template=template)
    if prompts.probe is not None:
        _print_notes(prompts.probe)
    return prompts if limit is None else prompts.head(limit)


@dataclass(frozen=True)
class RelationsRequest:
    """The relations a command was asked to score: ``--relations``, ``--template``, ``--limit``."""

    spec: str | None
    template: int = 0
    limit: int | None = None

    def load(self) -> ProbeSet | None:
        """The probe set (the first ``limit`` items of each relation), notes on stderr;
        ``None`` where no relation was named."""
        if self.spec is None:
            return None
        return load_probe_noting(self.spec, template=self.template, limit=self.limit)


def relation_options(
    default: str | None = DEFAULT_RELATION,
    help: str = "Bundled relation(s), comma-separated, 'all', or an LRE .json file/folder.",
) -> Callable[[F], F]:
    """Give a command ``--relations``/``-r`` (default ``default``), ``--template``/``-t``
    and ``--limit``, for its parameter annotated :class:`RelationsRequest`."""
    options = {
        "relations": (str | None, default, typer.Option("--relations", "-r", help=help)),
        "template": (
            int,
            0,
            typer.Option("--template", "-t", help="LRE prompt template index (from 0)."),
        ),
        "limit": (
            int | None,
            None,
            typer.Option("--limit", help="Use only the first N items (of each relation).", min=1),
        ),
    }

    def params(kind: type, name: str) -> tuple[list[Parameter], list[Parameter]]:
        kind_ = Parameter.POSITIONAL_OR_KEYWORD  # where the command put its parameter
        return [
            Parameter(key, kind_, default=value, annotation=Annotated[tp, opt])
            for key, (tp, value, opt) in options.items()
        ], []

    def build(kind: type, values: dict[str, Any]) -> RelationsRequest:
        return RelationsRequest(values["relations"], values["template"], values["limit"])

    return option_group((RelationsRequest,), params, build)


__all__ = [
    "DEFAULT_RELATION",
    "RelationsRequest",
    "load_probe_noting",
    "read_prompts_noting",
    "relation_options",
]
