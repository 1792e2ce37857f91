"""The ``mechmoe`` command line: one module per command, loaded when it is run.

:data:`COMMANDS` is the app's table: each command's name, the module that defines it
(a ``typer.Typer`` named ``app`` holding the command, or a group of them) and its
one-line help. ``mechmoe --help`` prints the table without importing any command
module, so it returns at once; running a command imports its module, which imports what
it needs (torch included) at the top. Adding a command is one module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

from mechmoe._version import __version__
from mechmoe.cli._common import user_errors

#: Every command: name → (module defining ``app``, one-line help). In the order ``--help``
#: lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "adapters": (
        "mechmoe.cli.adapters",
        "Model-family adapters: list them, check them on a model.",
    ),
    "probes": (
        "mechmoe.cli.probes",
        "Relation probe sets (LRE format): list the bundled ones, show items, rebuild them.",
    ),
    "zoo": (
        "mechmoe.cli.zoo",
        "The miniature zoo: a tiny OLMoE and a tiny dense OLMo pre-trained here, with checkpoints.",
    ),
    "attribute": (
        "mechmoe.cli.attribute",
        "Score neurons, experts, heads or layers by (Gated-)LPI and print the top ones.",
    ),
    "probe": (
        "mechmoe.cli.probe",
        "Relational recall: HIT@k and MRR of each relation's gold objects.",
    ),
    "mask-heads": (
        "mechmoe.cli.mask_heads",
        "HIT@k with attention heads masked: the top-N by LPI, given heads, or a grid vs random heads.",
    ),
    "route": (
        "mechmoe.cli.route",
        "Change routing (ban, force, top-k, zero or scale experts) and compare predictions.",
    ),
    "analyze": (
        "mechmoe.cli.analyze",
        "Statistics of a trajectory store: backbone, consolidation, robustness, routing.",
    ),
    "demo": (
        "mechmoe.cli.demo",
        "Run the miniature study end to end: pre-train, sweep, report; print the headline table.",
    ),
    "report": (
        "mechmoe.cli.report",
        "Write OUT/index.html (figures inlined) and one PNG per figure.",
    ),
    "trajectory": (
        "mechmoe.cli.trajectory",
        "Run measures over a model's checkpoints into a resumable store.",
    ),
}


def load_command(name: str) -> Any:
    """The click command of ``name``: its module imported, its ``app`` turned into a command."""
    module, _ = COMMANDS[name]
    command = typer.main.get_command(importlib.import_module(module).app)
    command.name = name
    return command


class _Commands(MutableMapping[str, Any]):
    """The group's commands: every name of :data:`COMMANDS` at once, each loaded when used."""

    def __init__(self, added: MutableMapping[str, Any]) -> None:
        self._loaded = dict(added)

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            if name not in COMMANDS:
                raise KeyError(name)
            self._loaded[name] = load_command(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*COMMANDS, *self._loaded]))

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self._loaded))


class LazyGroup(TyperGroup):
    """The root group: commands from :data:`COMMANDS`, imported only when one is run.

    While help is written (``mechmoe --help``) each command is a stand-in with the
    table's one-line help. A user error anywhere in a command, parsing included, is one
    line on stderr and exit status 2 (:func:`mechmoe.cli._common.user_errors`).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = _Commands(self.commands)
        self._summaries = False

    @contextmanager
    def _summaries_only(self) -> Iterator[None]:
        self._summaries, before = True, self._summaries
        try:
            yield
        finally:
            self._summaries = before

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # names only: nothing is imported

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if self._summaries and cmd_name in COMMANDS:
            return TyperCommand(cmd_name, help=COMMANDS[cmd_name][1])
        return self.commands.get(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with self._summaries_only():
            super().format_help(ctx, formatter)

    def shell_complete(self, ctx: Any, incomplete: str) -> Any:
        with self._summaries_only():
            return super().shell_complete(ctx, incomplete)

    def invoke(self, ctx: Any) -> Any:
        with user_errors():
            return super().invoke(ctx)


app = typer.Typer(
    name="mechmoe",
    cls=LazyGroup,
    help="Mechanistic interpretability of MoE and dense LMs: adapters, attribution, probes, interventions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> bool:
    # A parameter callback runs while parsing, so `mechmoe --version` works without a command.
    if value:
        typer.echo(f"mechmoe {__version__}")
        raise typer.Exit()
    return value  # click passes the callback's return value on as the parameter's value


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    pass


def main() -> None:
    app()


__all__ = ["COMMANDS", "LazyGroup", "app", "load_command", "main"]
