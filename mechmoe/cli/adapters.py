"""``mechmoe adapters``: list the families and check the conformance identities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechmoe.cli._common import (
    BackendOpt,
    DeviceOpt,
    DtypeOpt,
    RevisionOpt,
    TokenizerOpt,
    console,
    fail,
    load_model,
    run_user_errors,
)

app = typer.Typer(
    help="Model-family adapters: list them, check them on a model.", no_args_is_help=True
)


@app.command("list")
@run_user_errors
def list_cmd() -> None:
    """List every registered adapter and what its spec says."""
    from mechmoe.adapters import get_adapter, list_adapters

    table = Table(title="mechmoe adapters")
    for col in ("architecture", "adapter", "FFN", "norm", "post-norms", "description"):
        table.add_column(col)
    for arch in list_adapters():
        spec = get_adapter(arch)
        ffn = "MoE" if spec.moe else "dense"
        if spec.moe and spec.dense:
            ffn = "MoE (+dense layers)"
        if spec.moe and spec.moe.shared:
            ffn += " +shared"
        norm = spec.norm.kind + ("" if spec.norm.weight else " (no weight)")
        post = "yes" if (spec.attn_out_norm or spec.ffn_out_norm) else ""
        table.add_row(arch, spec.name, ffn, norm, post, spec.description)
    console.print(table)


@app.command("check")
@run_user_errors
def check_cmd(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to check (hub id, folder, .gguf, 'smollm2', 'tiny:FAMILY'). "
            "Default: every built-in tiny model.",
            show_default=False,
        ),
    ] = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    tokenizer: TokenizerOpt = None,
    backend: BackendOpt = "nnsight",
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="Text file, one prompt a line.")
    ] = None,
    positions: Annotated[
        str, typer.Option("--positions", help="'all' tokens (default) or only the 'last'.")
    ] = "all",
) -> None:
    """Check the five conformance identities and print the worst error of each."""
    from mechmoe.ops.conformance import IDENTITIES, check_model
    from mechmoe.zoo.tiny import TINY_FAMILIES

    names = models or [f"tiny:{f}" for f in TINY_FAMILIES]
    prompt_list = _read_prompts(prompts) if prompts else None
    table = Table(title="conformance (worst |error|; ✓ within tolerance × max(1, scale))")
    table.add_column("model")
    table.add_column("adapter")
    for key in IDENTITIES:
        table.add_column(key, justify="right")
    table.add_column("result")
    all_ok = True
    for name in names:
        model = load_model(
            name,
            revision=revision,
            device=device,
            dtype=dtype,
            tokenizer=tokenizer,
            backend=backend,
        )
        report = check_model(model, prompt_list, positions=positions)
        cells = []
        for r in report.results:
            mark = "[green]✓[/]" if r.passed else "[red]✗[/]"
            cells.append(f"{r.max_abs_error:.1e} {mark}" + ("" if r.passed else f" ({r.where})"))
        ok = report.passed
        all_ok &= ok
        table.add_row(name, report.adapter, *cells, "[green]pass[/]" if ok else "[red]FAIL[/]")
    console.print(table)
    console.print("  ".join(f"[bold]{k}[/]: {v}" for k, v in IDENTITIES.items()), style="dim")
    if not all_ok:
        raise typer.Exit(1)


def _read_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise fail(f"prompt file {str(path)!r} does not exist")
    try:
        # utf-8-sig: a byte-order mark is not part of the first prompt
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise fail(f"prompt file {str(path)!r} is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise fail(f"prompt file {str(path)!r} has no prompts (one prompt a line)")
    return prompts


__all__ = ["app"]
