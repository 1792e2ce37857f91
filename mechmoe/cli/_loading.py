"""The load-option group: every load option declared once, for every command that loads.

A command that loads a model by name takes one parameter annotated :class:`ModelRequest`
and is decorated with :func:`load_options`: the decorator gives it the ``MODEL``
argument and every load option (``--revision``, ``--device``, ``--dtype``,
``--tokenizer``, ``--backend``, …), and calls it with a :class:`ModelRequest` (the name
and one :class:`~mechmoe.model.options.LoadOptions`). A command that hands options on
(``mechmoe trajectory`` to a sweep) takes a parameter annotated ``LoadOptions`` instead,
and may take only some of the options (``fields=``).

A new load option for the command line is one entry of :data:`LOAD_OPTIONS` (its field
of ``LoadOptions`` and its typer option); every model-loading command then has it.

Example (a command module)::

    app = typer.Typer()

    @app.command("probe")
    @load_options()
    def probe(model: ModelRequest, k: KOpt = 10) -> None:
        handle = model.load()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from inspect import Parameter
from typing import Annotated, Any, TypeVar

import typer

import mechmoe.model
from mechmoe._types import ExpertsImplementation
from mechmoe.cli._common import ModelArg, choice, err_console, option_group
from mechmoe.model import LoadOptions, Model

F = TypeVar("F", bound=Callable[..., Any])
_DEFAULTS = LoadOptions()

#: Every load option of the command line: ``LoadOptions`` field → its typer option. The
#: default of each is the field's default, so it is written once (in ``LoadOptions``).
LOAD_OPTIONS: dict[str, Any] = {
    "revision": Annotated[
        str | None, typer.Option("--revision", help="Hub branch, tag or commit.")
    ],
    "device": Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")],
    "device_map": Annotated[
        str | None,
        typer.Option(
            "--device-map",
            help="Passed to from_pretrained, e.g. 'auto' to spread a big model over the GPUs.",
        ),
    ],
    "dtype": Annotated[
        str, typer.Option("--dtype", help="float32 (exact checks), bfloat16 or float16.")
    ],
    "tokenizer": Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="Tokenizer to use: a folder, a tokenizer.json file or a hub id "
            "(for model folders without one, e.g. training checkpoints).",
        ),
    ],
    "backend": Annotated[
        str,
        typer.Option(
            "--backend",
            help="Capture backend: nnsight (default) or transformerlens "
            "(pip install 'mechmoe[tl]'); results agree to 1e-5.",
        ),
    ],
    "experts_implementation": choice(
        ExpertsImplementation,
        "--experts-implementation",
        help="How transformers runs fused experts; both are exact.",
    ),
    "attn_implementation": Annotated[
        str | None,
        typer.Option(
            "--attn-implementation",
            help="How transformers runs attention, e.g. eager or sdpa (default: its choice).",
        ),
    ],
    "trust_remote_code": Annotated[
        bool,
        typer.Option(
            "--trust-remote-code",
            help="Run the modeling code a hub repo or folder ships (only for sources you trust).",
        ),
    ],
    "allow_missing_weights": Annotated[
        bool,
        typer.Option(
            "--allow-missing-weights",
            help="Load a checkpoint whose weights do not match its config, with the missing "
            "or mismatched tensors random (recorded in every result); refused by default.",
        ),
    ],
}


@dataclass(frozen=True)
class ModelRequest:
    """The model a command was asked for: ``MODEL`` and how to load it."""

    name: str
    options: LoadOptions

    def load(self) -> Model:
        """Load it, with a spinner on stderr (real weights take a while)."""
        return load_model(self.name, self.options)


def load_model(name: str, options: LoadOptions) -> Model:
    """:func:`mechmoe.load` with a spinner on stderr."""
    with err_console.status(f"loading {name}…", spinner="dots"):
        # looked up on the module at call time, so tests can watch or replace it
        return mechmoe.model.load(name, options)


def load_options(fields: Sequence[str] | None = None) -> Callable[[F], F]:
    """Give a command the load options (all of :data:`LOAD_OPTIONS`, or ``fields``).

    The command's parameter annotated :class:`ModelRequest` becomes the ``MODEL``
    argument, and the command receives a ``ModelRequest``; a parameter annotated
    ``LoadOptions`` receives the options alone.
    """
    names = tuple(LOAD_OPTIONS) if fields is None else tuple(fields)
    unknown = sorted(set(names) - set(LOAD_OPTIONS))
    if unknown:
        raise ValueError(f"no load option {unknown[0]!r}; the options are {list(LOAD_OPTIONS)}")

    def params(kind: type, name: str) -> tuple[list[Parameter], list[Parameter]]:
        model = [Parameter(name, Parameter.POSITIONAL_OR_KEYWORD, annotation=ModelArg)]
        options = [
            Parameter(
                field,
                Parameter.KEYWORD_ONLY,
                default=getattr(_DEFAULTS, field),
                annotation=LOAD_OPTIONS[field],
            )
            for field in names
        ]
        return (model if kind is ModelRequest else []), options

    def build(kind: type, values: dict[str, Any]) -> ModelRequest | LoadOptions:
        options = LoadOptions.build(**{field: values.pop(field) for field in names})
        if kind is LoadOptions:
            return options
        (model,) = values.values()  # MODEL, the one argument left
        return ModelRequest(model, options)

    return option_group((ModelRequest, LoadOptions), params, build)


__all__ = ["LOAD_OPTIONS", "ModelRequest", "load_model", "load_options"]
