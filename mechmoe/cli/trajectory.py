"""``mechmoe trajectory``: run measures over a model's training checkpoints into one store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechmoe._types import Executor
from mechmoe.cli._common import OverwriteOpt, choice, console
from mechmoe.cli._inputs import load_probe_noting
from mechmoe.cli._loading import LOAD_OPTIONS, load_options
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.writer import prepare_output, recognize
from mechmoe.model import LoadOptions
from mechmoe.trajectory import HubRevisions, LocalCheckpoints, SweepSummary, sweep
from mechmoe.trajectory.measures import DEFAULT_MEASURES
from mechmoe.trajectory.store import KIND, Status, export_netcdf

app = typer.Typer()

#: The load options a sweep takes: all but the revision (each checkpoint is its own).
SWEEP_LOAD_OPTIONS = tuple(name for name in LOAD_OPTIONS if name != "revision")
ExecutorOpt = choice(
    Executor, "--executor", help="local (one process) or dask (a cluster of workers)."
)

#: Rows of the per-checkpoint table above which only failures and duplicates are listed.
MAX_ROWS = 40


@app.command("trajectory")
@load_options(fields=SWEEP_LOAD_OPTIONS)
def trajectory(
    options: LoadOptions,
    model: Annotated[
        str,
        typer.Argument(
            help="Hub repo id (with --revisions), or the model's name (with --checkpoints).",
            show_default=False,
        ),
    ],
    probe: Annotated[
        str,
        typer.Option(
            "--probe",
            "-p",
            help="Bundled relation(s), comma-separated, 'all', or an LRE .json file/folder.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="The store folder (run.zarr); rerun to resume it.",
            show_default=False,
        ),
    ],
    revisions: Annotated[
        str | None,
        typer.Option(
            "--revisions",
            "-r",
            help="Which checkpoints: all, 5000,10000, every:N, log:N, range:A-B, first:N, last:N, "
            "chained with '+' (range:1000-50000+log:10). Hub branches step{N}-tokens{M}B, or "
            "with --checkpoints a selection among the folder's checkpoints.",
        ),
    ] = None,
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            "--checkpoints",
            "-c",
            help="A folder of checkpoints (step_000100/, step100/, checkpoint-100/, "
            "step100-tokens4B/) or a .json/.csv manifest (step, path, tokens).",
        ),
    ] = None,
    measures: Annotated[
        str,
        typer.Option(
            "--measures", "-m", help="Comma-separated measure names, or 'all' (every built-in)."
        ),
    ] = "all",
    probe_items: Annotated[
        int | None,
        typer.Option("--probe-items", help="Use only the first N items of each relation.", min=1),
    ] = None,
    executor: ExecutorOpt = "local",
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Dask workers of a LocalCluster.", min=1)
    ] = 1,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Address of a running Dask scheduler (tcp://host:8786)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="torch threads per checkpoint, on every executor (default: the store's, "
            "or torch's setting for a new store).",
            min=1,
        ),
    ] = None,
    export_nc: Annotated[
        Path | None,
        typer.Option("--export-nc", help="Also write the whole store to this netCDF file."),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run measures over a model's checkpoints into a resumable store.

    Each checkpoint is loaded, measured, freed and written atomically. Rerunning the same
    command resumes, retries failed checkpoints, and adds new measures or checkpoints
    without recomputing what is there.

    Exits 1 if a checkpoint failed: it is recorded in the store and retried next time.
    """
    if revisions is None and checkpoints is None:
        raise InvalidInputError(
            "say where the checkpoints are: --revisions SPEC (hub branches) or --checkpoints DIR"
        )
    prepare_output(out, kind=KIND, overwrite=overwrite, append=True)
    if export_nc is not None:
        _check_export(export_nc, out, overwrite)
    names = _measure_names(measures)
    probe_set = load_probe_noting(probe, limit=probe_items)
    if checkpoints is not None:
        source = LocalCheckpoints(checkpoints, select=revisions or "all")
    else:
        source = HubRevisions(model, select=revisions or "all")
    summary = sweep(
        source,
        probe=probe_set,
        measures=names,
        out=out,
        name=model,
        executor=executor,  # type: ignore[arg-type]
        workers=workers,
        scheduler=scheduler,
        threads=threads,
        overwrite=overwrite,
        options=options,
    )
    _print_summary(summary)
    if isinstance(source, HubRevisions) and source.listed_from == "cache":
        console.print(
            f"offline: the branches of {model!r} were listed from the local hub cache "
            "(the hub may hold more)",
            highlight=False,
        )
    if export_nc is not None:
        path = export_netcdf(out, export_nc, overwrite=overwrite)
        console.print(f"exported to {path}")
    if summary.failed:
        raise typer.Exit(1)


def _check_export(export_nc: Path, out: Path, overwrite: bool) -> None:
    """--export-nc names a new .nc file (or, with --overwrite, an earlier export)."""
    if export_nc.expanduser().absolute() == out.expanduser().absolute():
        raise InvalidInputError(
            f"--export-nc {str(export_nc)!r} is the store itself (--out); name a netCDF file "
            f"next to it, e.g. --export-nc {out.with_suffix('.nc')}"
        )
    if export_nc.suffix.lower() != ".nc":
        raise InvalidInputError(f"--export-nc {str(export_nc)!r} must end in .nc")
    if not overwrite and export_nc.is_file() and recognize(export_nc) == KIND:
        raise InvalidInputError(
            f"--export-nc {str(export_nc)!r} holds an earlier export; delete it or name "
            "another file (--overwrite would also start the store over)"
        )
    prepare_output(export_nc, kind=KIND, overwrite=overwrite)


def _measure_names(text: str) -> list[str]:
    if text.strip().lower() == "all":
        return list(DEFAULT_MEASURES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InvalidInputError("--measures names nothing; give names such as hit,expert_load")
    return names


def _print_summary(summary: SweepSummary) -> None:
    rows = summary.rows()
    notable = (Status.FAILED, Status.DUPLICATE)
    shown = rows if len(rows) <= MAX_ROWS else [r for r in rows if r[2] in notable]
    if shown:
        table = Table(title=f"checkpoints → {summary.store}")
        for col in ("step", "checkpoint", "status", "detail"):
            table.add_column(col, justify="right" if col == "step" else "left")
        for step, label, status, detail in shown:
            style = {Status.FAILED: "red", Status.DUPLICATE: "yellow"}.get(status)
            table.add_row(str(step), label, f"[{style}]{status}[/]" if style else status, detail)
        console.print(table)
    totals = Table(title="summary")
    for col in ("selected", "done", "skipped", "failed", "duplicates", "time"):
        totals.add_column(col, justify="right")
    totals.add_row(
        str(summary.selected),
        str(len(summary.done)),
        str(len(summary.skipped)),
        str(len(summary.failed)),
        str(len(summary.duplicates)),
        f"{summary.wall_seconds:.1f} s",
    )
    console.print(totals)
    if summary.ignored:
        console.print(
            f"ignored {len(summary.ignored)} entries that are not checkpoints "
            f"(e.g. {', '.join(summary.ignored[:3])})",
            highlight=False,
        )
    if summary.failed:
        console.print(
            "[red]failed checkpoints are recorded in the store; rerun the same command to retry them[/]"
        )


__all__ = ["app", "trajectory"]
