"""The Dask executor (a LocalCluster of 2 worker processes) gives the local executor's store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mechmoe.probes import load_probe
from mechmoe.trajectory import LocalCheckpoints, open_store, sweep
from mechmoe.trajectory.sweep import ParameterNorm

pytest.importorskip("dask.distributed")


def tree(path: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out[str(rel)] = p.read_bytes()
    return out


@pytest.mark.slow
def test_dask_local_cluster_matches_local(tmp_path, checkpoint_builder):
    """Bit for bit, with each executor's default threads: neuron_lpi's float32 reductions
    add in an order set by the thread count, so both use the same one."""
    root = tmp_path / "ckpts"
    # step 400 repeats step 200's weights: the duplicate rule must not depend on arrival order
    checkpoint_builder(root, (100, 200, 300, 400), same_as={400: 200})
    probe = load_probe("country_capital_city").head(3)
    kw = dict(probe=probe, measures=[ParameterNorm(), "hit", "neuron_lpi"])
    local = sweep(LocalCheckpoints(root), out=tmp_path / "local.zarr", **kw)
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    dask = sweep(
        LocalCheckpoints(root), out=tmp_path / "dask.zarr", executor="dask", workers=2, **kw
    )
    # Dask's nanny sets OMP_NUM_THREADS=1 in the starting process; the sweep undoes it
    assert {k: os.environ.get(k) for k in env} == env
    assert local.threads == dask.threads
    assert open_store(tmp_path / "dask.zarr").attrs["torch_threads"] == local.threads
    assert local.done == dask.done == [100, 200, 300]
    assert local.duplicates == dask.duplicates == {400: 200}
    assert (
        open_store(tmp_path / "dask.zarr")
        .load()
        .identical(open_store(tmp_path / "local.zarr").load())
    )
    assert tree(tmp_path / "dask.zarr") == tree(tmp_path / "local.zarr")
    # resuming with the other executor finds nothing to do
    again = sweep(
        LocalCheckpoints(root), out=tmp_path / "dask.zarr", executor="dask", workers=2, **kw
    )
    assert again.done == [] and again.skipped == [100, 200, 300]
