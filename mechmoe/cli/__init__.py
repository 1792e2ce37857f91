"""The ``mechmoe`` command line. Each command group lives in its own module.

Command modules import torch, transformers and nnsight inside their functions, so
``mechmoe --help`` returns at once.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="mechmoe",
    help="Mechanistic interpretability of MoE and dense LMs: adapters, attribution, probes, interventions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# (module, attribute, group name): each group module exposes a Typer ``app``.
_GROUPS = [
    ("mechmoe.cli.adapters", "app", "adapters"),
    ("mechmoe.cli.probes", "app", "probes"),
    ("mechmoe.cli.zoo", "app", "zoo"),
]
# (module, function name, command name): top-level commands.
_COMMANDS = [
    ("mechmoe.cli.attribute", "attribute", "attribute"),
    ("mechmoe.cli.interventions", "probe", "probe"),
    ("mechmoe.cli.interventions", "mask_heads", "mask-heads"),
    ("mechmoe.cli.interventions", "route", "route"),
    ("mechmoe.cli.analyze", "analyze", "analyze"),
    ("mechmoe.cli.demo", "demo", "demo"),
    ("mechmoe.cli.report", "report", "report"),
    ("mechmoe.cli.trajectory", "trajectory", "trajectory"),
]


def _register() -> None:
    for module, attr, name in _GROUPS:
        try:
            group = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        app.add_typer(group, name=name)
    for module, attr, name in _COMMANDS:
        try:
            fn = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        app.command(name)(fn)


_register()


def _print_version(value: bool) -> bool:
    # A parameter callback runs while parsing, so `mechmoe --version` works without a command.
    if value:
        from mechmoe._version import __version__

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


__all__ = ["app", "main"]
