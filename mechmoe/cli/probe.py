"""``mechmoe probe``: relational recall (HIT@k, MRR) of a model on relation probes."""

from __future__ import annotations

import typer

from mechmoe.cli._common import BatchOpt, KOpt, OutOpt, OverwriteOpt, console
from mechmoe.cli._inputs import RelationsRequest, relation_options
from mechmoe.cli._loading import ModelRequest, load_options
from mechmoe.cli._results import check_out, compare_table, save
from mechmoe.probes import evaluate

app = typer.Typer()


@app.command("probe")
@load_options()
@relation_options()
def probe(
    model: ModelRequest,
    relations: RelationsRequest,
    k: KOpt = 10,
    out: OutOpt = None,
    batch_size: BatchOpt = 32,
    overwrite: OverwriteOpt = False,
) -> None:
    """Relational recall: HIT@k and MRR of each relation's gold objects."""
    check_out(out, overwrite)
    probe_set = relations.load()
    assert probe_set is not None  # the option has a default
    handle = model.load()
    ds = evaluate(handle, probe_set, k=k, batch_size=batch_size)
    console.print(compare_table(f"{handle.name} — {len(probe_set)} items", {"": ds}, k))
    save(ds, out, overwrite)


__all__ = ["app", "probe"]
