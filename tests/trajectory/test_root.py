"""The store's root: ``xr.open_zarr(run.zarr)`` equals ``open_store(run.zarr)`` after every write.

Checkpoints arrive in any order (before, between and after stored ones), measures are added
later, measures fail at some steps (an integer variable then needs NaN there), a later step
turns out to be a duplicate and is removed: after each, plain xarray reads the same Dataset
as mechmoe, eagerly and with dask. A root update cut short is redone by the next writer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from mechmoe.trajectory import open_store
from mechmoe.trajectory import root as root_mod
from mechmoe.trajectory.sources import Checkpoint
from mechmoe.trajectory.store import CheckpointResult, Status, TrajectoryStore


def m_ds(step: int) -> xr.Dataset:
    rng = np.random.default_rng(step)
    return xr.Dataset(
        {
            "a": ("layer", rng.normal(size=3)),
            "count": ("layer", rng.integers(0, 9, size=3)),
            "s": ((), float(step)),
        },
        coords={"layer": [0, 1, 2], "layer_name": ("layer", ["emb", "mid", "out"])},
        attrs={"scale": 1.0, "seed_of_step": step},
    )


def n_ds(step: int) -> xr.Dataset:
    rng = np.random.default_rng(1000 + step)
    return xr.Dataset(
        {"b": (("layer", "k"), rng.normal(size=(3, 2)))},
        coords={"layer": [0, 1, 2], "k": [1, 5]},
        attrs={"note": "n"},
    )


def result(step: int, h: str, *names: str, error: str | None = None) -> CheckpointResult:
    make = {"m": m_ds, "n": n_ds}
    return CheckpointResult(
        Checkpoint(step, tokens=step * 1e6, label=f"step{step}"),
        weights_hash=h,
        datasets={n: make[n](step) for n in names},
        model_attrs={"adapter": "x", "is_moe": 1, "torch_threads": 2},
        error=error,
    )


def same(path) -> None:
    mine = open_store(path).load()
    plain = xr.open_zarr(path)
    assert all(v.chunks is not None for v in plain.data_vars.values())  # dask arrays
    assert plain.load().identical(mine), (plain, mine)
    lazy = xr.open_zarr(path, chunks={})
    for name, var in mine.data_vars.items():
        np.testing.assert_array_equal(lazy[name].data.compute(), var.values)


def test_root_equals_open_store_after_every_write(tmp_path, monkeypatch):
    rewrites: list[int] = []
    real = root_mod._rewrite

    def counting(path, plan, out, reserved):
        rewrites.append(len(plan.steps))
        return real(path, plan, out, reserved)

    monkeypatch.setattr(root_mod, "_rewrite", counting)
    path = tmp_path / "run.zarr"
    store = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}, "n": {}})
    steps = [
        (result(200, "h200", "m"), Status.DONE, True),  # the first: written whole
        (result(100, "h100", "m"), Status.DONE, False),  # before it: later chunks move
        (result(400, "h400", "m"), Status.DONE, False),  # after: appended
        (result(300, "h300", "m", "n"), Status.DONE, True),  # a new measure: new variables
        (result(100, "h100", "n"), Status.DONE, False),  # a measure added at a step
        (result(500, "h500", "m", error="measure 'n' failed"), Status.FAILED, False),
        (result(600, "h600", "n"), Status.DONE, True),  # 'count' (int) now needs NaN at 600
        (result(250, "h300", "m", "n"), Status.DONE, True),  # 300 becomes its duplicate
        (result(600, "h600", "m"), Status.DONE, True),  # 'count' is whole again: int again
    ]
    for res, status, rewritten in steps:
        before = len(rewrites)
        assert store.write(res) == status
        same(path)
        assert (len(rewrites) > before) == rewritten, (res.checkpoint.step, rewrites)
    ds = open_store(path)
    assert ds["step"].values.tolist() == [100, 200, 250, 400, 500, 600]
    assert ds.attrs["duplicate_steps"] == "300" and ds.attrs["failed_steps"] == "500"
    assert ds["count"].dtype == np.int64 and np.isnan(ds["b"].sel(step=[200, 400, 500])).all()
    # the plain reader needs nothing of mechmoe's: consolidated metadata, zarr v3
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and "consolidated_metadata" in meta
    assert xr.open_zarr(path, consolidated=True).load().identical(ds.load())


def test_int_variable_gains_nan_where_a_step_lacks_it(tmp_path):
    path = tmp_path / "run.zarr"
    store = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}, "n": {}})
    store.write(result(100, "h1", "m"))
    store.write(result(200, "h2", "n"))
    ds = xr.open_zarr(path).load()
    assert ds["count"].dtype == np.float64 and np.isnan(ds["count"].sel(step=200)).all()
    same(path)


def test_a_root_update_cut_short_is_redone_by_the_next_writer(tmp_path, monkeypatch):
    path = tmp_path / "run.zarr"
    store = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}})
    store.write(result(100, "h1", "m"))
    store.write(result(300, "h3", "m"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(root_mod, "_finish", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write(result(200, "h2", "m"))  # the part lands; the root is mid-change
    monkeypatch.undo()
    assert json.loads((path / "root.json").read_text())["state"] == "updating"
    assert open_store(path)["step"].values.tolist() == [100, 200, 300]
    again = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}})
    again.sync_root()
    same(path)
    assert json.loads((path / "root.json").read_text())["state"] == "clean"


def test_a_first_root_write_killed_after_making_an_array_folder_is_redone(tmp_path, monkeypatch):
    """A kill between an array folder's mkdir and its metadata (the first write, nothing on
    record yet) leaves a folder the next writer must clear, not trip over."""
    path = tmp_path / "run.zarr"
    store = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}})
    real = root_mod._link

    called = []

    def killed(src, dst):
        called.append(str(dst.relative_to(path)))
        if dst.name != "zarr.json":
            real(src, dst)
            return
        raise KeyboardInterrupt  # the folder and maybe chunks are there, its zarr.json not

    monkeypatch.setattr(root_mod, "_link", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write(result(100, "h1", "m"))
    monkeypatch.undo()
    cut = path / called[-1].split("/")[0]  # the array folder the kill cut short
    assert cut.is_dir() and not (cut / "zarr.json").exists()
    user = path / "notes"  # a user's folder in the store is never removed
    user.mkdir()
    (user / "mine.txt").write_text("keep")
    again = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}})
    again.sync_root(verify=True)
    same(path)
    assert (user / "mine.txt").read_text() == "keep"


def test_variable_names_of_the_store_are_refused(tmp_path):
    store = TrajectoryStore.create_or_open(tmp_path / "r.zarr", {"model": "x"}, {"m": {}})
    res = result(100, "h1")
    res.datasets = {"m": xr.Dataset({"checkpoints": ("x", [1.0])})}
    with pytest.raises(Exception, match="'checkpoints', a name the trajectory store keeps"):
        store.write(res)


def test_a_store_of_an_earlier_mechmoe_is_read_and_upgraded(tmp_path):
    """Format 1 (zarr v2 parts, no checksums): open_store reads it; the next writer gives
    its parts checksums and the store a root, recomputing nothing."""
    path = tmp_path / "old.zarr"
    path.mkdir()
    (path / ".mechmoe.json").write_text(
        json.dumps(
            {"mechmoe_kind": "trajectory", "mechmoe_format": "1", "mechmoe_version": "0.1.0"}
        )
    )
    (path / "config.json").write_text(json.dumps({"format": 1, "model": "x"}))
    (path / "measures").mkdir()
    (path / "measures" / "m.json").write_text("{}")
    for step in (100, 200):
        part = path / "checkpoints" / f"step_{step:012d}" / "m"
        part.mkdir(parents=True)
        m_ds(step).to_zarr(part / "m.zarr", zarr_format=2, consolidated=False)
        record = {
            "step": step,
            "tokens": step * 1e6,
            "revision": f"step{step}",
            "label": f"step{step}",
            "weights_hash": f"h{step}",
            "measures": ["m"],
            "not_applicable": [],
            "model_attrs": {"adapter": "x", "is_moe": 1},
        }
        (part / "checkpoint.json").write_text(json.dumps(record))
    before = open_store(path).load()
    assert before["step"].values.tolist() == [100, 200]
    store = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}})
    assert json.loads((path / "config.json").read_text())["format"] == 2
    rec = json.loads(
        (path / "checkpoints" / "step_000000000100" / "m" / "checkpoint.json").read_text()
    )
    assert "m.zarr/a/c/0" in rec["files"] and rec["config"]["format"] == 2
    assert store.verify() == []
    store.sync_root()
    after = open_store(path).load()
    assert json.loads(after.attrs.pop("config"))["format"] == 2  # the one change
    before.attrs.pop("config")
    assert after.identical(before)
    same(path)


def test_the_root_does_not_depend_on_its_history(tmp_path):
    """Written step by step (first made from the parts, then updated in place), the root
    has the bytes of a root written in one go from the same parts."""
    import shutil

    def tree(folder):
        return {
            str(f.relative_to(folder)): f.read_bytes()
            for f in sorted(folder.rglob("*"))
            if f.is_file() and not f.name.startswith(".")
        }

    path = tmp_path / "run.zarr"
    store = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}, "n": {}})
    for res in (
        result(200, "h200", "m", "n"),
        result(100, "h100", "m", "n"),
        result(300, "h300", "m", "n"),
    ):
        store.write(res)
    again = tmp_path / "again.zarr"
    shutil.copytree(path, again)
    (again / "root.json").unlink()  # forces a rewrite from the parts
    TrajectoryStore.create_or_open(again, {"model": "x"}, {"m": {}, "n": {}}).sync_root()
    assert tree(again) == tree(path)
    same(again)
