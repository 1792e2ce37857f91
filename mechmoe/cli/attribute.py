"""``mechmoe attribute``: Gated-LPI scores for a prompt file or a probe, as a table and a file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from mechmoe.cli._common import (
    BackendOpt,
    DeviceOpt,
    DtypeOpt,
    ModelArg,
    OverwriteOpt,
    RevisionOpt,
    TokenizerOpt,
    console,
    err_console,
    load_model,
    run_user_errors,
)

CLI_LEVELS = ("neuron", "expert", "head", "attn", "ffn", "layer")


def read_prompts(
    path: Path, *, template: int = 0
) -> tuple[list[str], list[tuple[str, ...]] | None]:
    """Prompts (and each prompt's gold objects where the file has them) from ``path``.

    A ``.json`` file is an LRE relation (prompts and object sets; a subject listed with
    several objects is one prompt whose gold answer is the set). Any other file has one
    prompt a line, or ``prompt<TAB>object`` on every line. Blank lines at the end are
    ignored; a blank line inside the file, a line with an empty object or a second TAB,
    or a file that gives objects on some lines only, is an error naming the line.
    """
    from mechmoe.core.errors import InvalidInputError

    if not path.exists() or path.is_dir():
        raise InvalidInputError(f"prompt file {str(path)!r} does not exist or is a folder")
    if path.suffix == ".json":
        from mechmoe.cli.probes import load_probe_noting

        probe = load_probe_noting(str(path), template=template)
        return list(probe.prompts), list(probe.object_sets)
    try:
        # utf-8-sig: a byte-order mark some editors write is not part of the first prompt
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise InvalidInputError(f"prompt file {str(path)!r} is not UTF-8 text") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InvalidInputError(f"prompt file {str(path)!r} has no prompts")
    prompts: list[str] = []
    objects: list[str | None] = []
    for i, line in enumerate(lines, start=1):
        where = f"line {i} of {str(path)!r}"
        prompt, tab, obj = line.partition("\t")
        if not prompt.strip():
            raise InvalidInputError(f"{where} is an empty prompt")
        if "\t" in obj:
            raise InvalidInputError(
                f"{where} has more than one TAB; write prompt<TAB>object with one TAB"
            )
        if tab and not obj.strip():
            raise InvalidInputError(f"{where} has a TAB but no object after it")
        prompts.append(prompt)
        objects.append(obj.strip() if tab else None)
    with_obj = [i for i, o in enumerate(objects, start=1) if o is not None]
    if not with_obj:
        return prompts, None
    if len(with_obj) < len(objects):
        missing = next(i for i, o in enumerate(objects, start=1) if o is None)
        raise InvalidInputError(
            f"line {missing} of {str(path)!r} has no gold object, but line {with_obj[0]} has "
            "one; write prompt<TAB>object on every line, or no objects at all"
        )
    return prompts, [(o,) for o in objects if o is not None]


def _parse_bytes(text: str) -> int:
    from mechmoe.core.errors import InvalidInputError

    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    s = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        number = float(s[:-1]) * units[s[-1]] if s and s[-1] in units else float(s)
        if not math.isfinite(number) or number < 1:
            raise ValueError
        return int(number)
    except ValueError:
        raise InvalidInputError(
            f"--memory-budget {text!r}: use a positive number of bytes, e.g. 512MiB or 4GiB"
        ) from None


def _table(ds: Any, items: list[Any], title: str) -> Any:
    from rich.table import Table

    level = ds.attrs["level"]
    n = int(ds.attrs["n_prompts"])
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column(level)
    table.add_column("LPI (mean)", justify="right")
    if level in ("neuron", "expert"):
        table.add_column("chosen", justify="right")
    if level == "neuron":
        table.add_column("promotes")
    for it in items:
        row = [str(it.rank), it.label, f"{it.score:+.4f}"]
        if level in ("neuron", "expert"):
            row.append("" if it.n_chosen is None else f"{it.n_chosen}/{n}")
        if level == "neuron":
            row.append(" ".join(repr(t) for t in it.tokens))
        table.add_row(*row)
    return table


@run_user_errors
def attribute(
    model: ModelArg,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            "-p",
            help="Prompt file: one prompt a line (optionally prompt<TAB>object) or an LRE relation .json.",
        ),
    ] = None,
    probe: Annotated[
        str | None,
        typer.Option("--probe", help="Bundled probe name(s), comma-separated, or 'all'."),
    ] = None,
    level: Annotated[
        str,
        typer.Option(
            "--level", "-l", help="neuron, expert, head, attn, ffn, or layer (attn and ffn)."
        ),
    ] = "neuron",
    target: Annotated[
        str,
        typer.Option(
            "--target",
            help="top1 (the model's prediction) or gold (the object's first token; of "
            "several gold objects, the one the model ranks highest).",
        ),
    ] = "top1",
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="exact, or certified (each score within --tolerance, proven; 'bounded' is "
            "its old name).",
        ),
    ] = "exact",
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance",
            help="Error bound per score in certified mode (1e-6: below fp32 rounding of the "
            "exact sum).",
        ),
    ] = 1e-4,
    top: Annotated[int, typer.Option("--top", "-n", help="Rows of the printed table.", min=1)] = 20,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the result to a .zarr folder or .nc file."),
    ] = None,
    per_prompt: Annotated[
        bool, typer.Option("--per-prompt", help="Also store per-prompt scores.")
    ] = False,
    reference_compat: Annotated[
        bool,
        typer.Option(
            "--reference-compat", help="The published code's final norm (RMS form, eps 1e-6)."
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Prompts per forward pass.", min=1)
    ] = 16,
    memory_budget: Annotated[
        str, typer.Option("--memory-budget", help="Budget for the engine's temporaries, e.g. 4GiB.")
    ] = "4GiB",
    template: Annotated[
        int, typer.Option("--template", "-t", help="LRE prompt template index.")
    ] = 0,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Use only the first N prompts.", min=1)
    ] = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    tokenizer: TokenizerOpt = None,
    backend: BackendOpt = "nnsight",
    overwrite: OverwriteOpt = False,
) -> None:
    """Score neurons, experts, heads or layers by (Gated-)LPI and print the top ones."""
    from mechmoe.core.errors import InvalidInputError

    if level not in CLI_LEVELS:
        raise InvalidInputError(f"--level {level!r}: use one of {', '.join(CLI_LEVELS)}")
    if target not in ("top1", "gold"):
        raise InvalidInputError(f"--target {target!r}: use top1 or gold")
    if precision not in ("exact", "certified", "bounded"):
        raise InvalidInputError(f"--precision {precision!r}: use exact or certified")
    if (prompts is None) == (probe is None):
        raise InvalidInputError("give exactly one of --prompts FILE or --probe NAME")
    budget = _parse_bytes(memory_budget)
    if out is not None:
        from mechmoe.ops.results import check_output_path

        check_output_path(out, overwrite=overwrite)
    if prompts is not None:
        texts, objects = read_prompts(prompts, template=template)
    else:
        from mechmoe.cli.probes import load_probe_noting

        assert probe is not None
        ps = load_probe_noting(probe, template=template)
        texts, objects = list(ps.prompts), list(ps.object_sets)
    if limit is not None:
        texts = texts[:limit]
        objects = None if objects is None else objects[:limit]
    if target == "gold" and objects is None:
        raise InvalidInputError(
            "--target gold needs gold objects: use an LRE .json, --probe, or prompt<TAB>object lines"
        )

    handle = load_model(
        model, revision=revision, device=device, dtype=dtype, tokenizer=tokenizer, backend=backend
    )
    targets = None
    if target == "gold":
        from mechmoe.probes import gold_token_ids

        assert objects is not None
        # one tuple of ids per prompt; for several objects attribution explains the one
        # whose first token the model ranks highest (docs/attribution.md)
        targets = gold_token_ids(handle.tokenizer, objects, texts)

    from mechmoe.ops.attribution import attribute as run
    from mechmoe.ops.results import save_result, top_items

    levels = ("attn", "ffn") if level == "layer" else (level,)
    results = []
    for lv in levels:
        results.append(
            run(
                handle,
                texts,
                level=lv,
                target=target,
                targets=targets,  # type: ignore[arg-type]
                precision=precision,
                tolerance=tolerance,
                memory_budget=budget,  # type: ignore[arg-type]
                reference_compat=reference_compat,
                per_prompt=per_prompt,
                batch_size=batch_size,
                progress=True,
            )
        )
    for ds in results:
        items = top_items(ds, top, model=handle)
        done = ds.attrs.get("precision", precision)  # levels without truncation run exact
        bound = (
            f", bound {ds.attrs['bound']:.2g}; of {ds.attrs.get('n_pairs', 0)} pairs, "
            f"{ds.attrs.get('n_moments', 0)} past the tail bound, "
            f"{ds.attrs.get('n_fallback', 0)} summed exactly"
            if done != "exact"
            else ""
        )
        title = (
            f"top {len(items)} {ds.attrs['level']} scores — {handle.name}, "
            f"{len(texts)} prompt{'' if len(texts) == 1 else 's'}, "
            f"target {target}, {done}{bound}"
        )
        console.print(_table(ds, items, title))
    if out is not None:
        if len(results) == 1:
            merged = results[0]
        else:
            import xarray as xr

            # One file for both sub-layers: scores stacked along a "sublayer" dim.
            merged = results[0].copy()
            for name in ("score", "score_per_prompt"):
                if name in merged:
                    merged[name] = xr.concat([r[name] for r in results], dim="sublayer")
            merged = merged.assign_coords(sublayer=list(levels))
            merged.attrs["level"] = "layer"
        save_result(merged, out, overwrite=overwrite)
        err_console.print(f"wrote {out}", highlight=False)


__all__ = ["attribute", "read_prompts"]
