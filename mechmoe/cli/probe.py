"""``mechmoe probe``: relational recall (HIT@k, MRR) of a model on relation probes."""

from __future__ import annotations

import typer

from mechmoe.cli._common import (
    DEFAULT_RELATION,
    BatchOpt,
    KOpt,
    LimitOpt,
    OutOpt,
    OverwriteOpt,
    RelationsOpt,
    TemplateOpt,
    console,
)
from mechmoe.cli._inputs import load_probe_noting
from mechmoe.cli._loading import ModelRequest, load_options
from mechmoe.cli._results import check_out, compare_table, save
from mechmoe.probes import evaluate

app = typer.Typer()


@app.command("probe")
@load_options()
def probe(
    model: ModelRequest,
    relations: RelationsOpt = DEFAULT_RELATION,
    k: KOpt = 10,
    limit: LimitOpt = None,
    out: OutOpt = None,
    batch_size: BatchOpt = 32,
    template: TemplateOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Relational recall: HIT@k and MRR of each relation's gold objects."""
    check_out(out, overwrite)
    probe_set = load_probe_noting(relations, template=template, limit=limit)
    handle = model.load()
    ds = evaluate(handle, probe_set, k=k, batch_size=batch_size)
    console.print(compare_table(f"{handle.name} — {len(probe_set)} items", {"": ds}, k))
    save(ds, out, overwrite)


__all__ = ["app", "probe"]
