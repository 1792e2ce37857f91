from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mechmoe.core.errors import InvalidInputError, OutputError
from mechmoe.trajectory import LocalCheckpoints, open_store, sweep
from mechmoe.trajectory.sources import Checkpoint
from mechmoe.trajectory.store import CheckpointResult, TrajectoryStore, export_netcdf
from mechmoe.trajectory.sweep import ParameterNorm

PROMPTS = ["The capital of France is", "Tokyo is a city in"]


def tree(path: Path) -> dict[str, bytes]:
    """Every file of a store (dot-names, i.e. the marker and temporaries, left out)."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out[str(rel)] = p.read_bytes()
    return out


def parts(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files of the per-checkpoint parts (the root is rewritten as they are added)."""
    return {k: v for k, v in files.items() if k.startswith("checkpoints/")}


def param_norms(folder: Path) -> list[float]:
    """The independent reference: each layer's parameter norm, straight from the HF model."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    out = []
    with torch.no_grad():
        for layer in hf.model.layers:
            total = 0.0
            for p in layer.parameters():
                total += float((p.double() ** 2).sum())
            out.append(total**0.5)
    return out


@dataclass
class Counting(ParameterNorm):
    """ParameterNorm that counts its calls (the local executor runs in this process)."""

    name: str = "counted"
    variables: tuple[str, ...] = ("param_norm",)
    calls: list[int] | None = None

    def config(self):
        return {}

    def __call__(self, model, probe):
        if self.calls is not None:
            self.calls.append(model.step)
        return super().__call__(model, probe).rename(param_norm="counted_norm")


@pytest.fixture
def ckpt_dir(tmp_path, tiny_checkpoints):
    """A private copy of the three session checkpoints (tests may damage it)."""
    root = tmp_path / "ckpts"
    root.mkdir()
    for folder in tiny_checkpoints:
        shutil.copytree(folder, root / folder.name)
    return root


def test_sweep_matches_direct_computation(tmp_path, ckpt_dir, tiny_checkpoints):
    from mechmoe.core.progress import Recorder, reporting

    with reporting(Recorder()) as rec:
        summary = sweep(
            LocalCheckpoints(ckpt_dir),
            probe=PROMPTS,
            measures=[ParameterNorm()],
            out=tmp_path / "r.zarr",
        )
    # one progress task over the checkpoints, advanced once per checkpoint, with timings
    mine = [e for e in rec.events if e.depth == 0]
    assert mine[0].kind == "start" and mine[0].total == 3
    assert [e.completed for e in mine if e.kind == "advance"] == [1, 2, 3]
    assert any("step_000300 done in" in e.description for e in mine)
    assert set(summary.seconds) == {100, 200, 300}
    assert summary.done == [100, 200, 300]
    assert summary.skipped == [] and summary.failed == {} and summary.duplicates == {}
    ds = open_store(tmp_path / "r.zarr")
    assert ds["param_norm"].dims == ("step", "layer")
    assert ds["step"].values.tolist() == [100, 200, 300]
    assert ds["step"].dtype == np.int64 and ds["tokens"].dtype == np.float64
    assert np.isnan(ds["tokens"].values).all()
    assert ds["revision"].values.tolist() == ["step_000100", "step_000200", "step_000300"]
    assert len(set(ds["weights_hash"].values.tolist())) == 3
    for i, folder in enumerate(tiny_checkpoints):
        np.testing.assert_allclose(ds["param_norm"].values[i], param_norms(folder), rtol=1e-12)
    assert ds.attrs["is_moe"] == 1 and ds.attrs["top_k"] == 2 and ds.attrs["n_experts"] == 8
    assert ds.attrs["model"] == "ckpts" and ds.attrs["probe_items"] == 2
    assert ds.attrs["measures"] == "param_norm" and ds.attrs["failed_steps"] == ""
    assert ds["param_norm"].attrs["measure"] == "param_norm"
    assert ds["param_norm"].attrs["scale"] == 1.0


@dataclass
class LoggedSource(LocalCheckpoints):
    """A source with its own loading: records each checkpoint it is asked for."""

    loaded: list[int] | None = None

    def load(self, checkpoint, options=None):
        self.loaded.append(checkpoint.step)
        return super().load(checkpoint, options)


def test_sweep_loads_through_the_source(tmp_path, ckpt_dir):
    """The sweep loads each checkpoint through ``source.load`` (the CheckpointSource
    contract), so a source with special loading is honoured; results are unchanged."""
    source = LoggedSource(ckpt_dir, loaded=[])
    sweep(source, probe=PROMPTS, measures=[ParameterNorm()], out=tmp_path / "a.zarr")
    assert source.loaded == [100, 200, 300]
    sweep(LocalCheckpoints(ckpt_dir), probe=PROMPTS, measures=[ParameterNorm()],
          out=tmp_path / "b.zarr")  # fmt: skip
    assert open_store(tmp_path / "a.zarr").identical(open_store(tmp_path / "b.zarr"))


def test_rerun_skips_and_adding_measures_or_checkpoints_computes_only_the_new(
    tmp_path, ckpt_dir, checkpoint_builder
):
    out = tmp_path / "r.zarr"
    calls: list[int] = []
    src = LocalCheckpoints(ckpt_dir, select="100,200")
    sweep(src, probe=PROMPTS, measures=[ParameterNorm()], out=out)
    before = tree(out)
    again = sweep(src, probe=PROMPTS, measures=[ParameterNorm()], out=out)
    assert again.done == [] and again.skipped == [100, 200]
    assert tree(out) == before
    # add a measure: computed on both checkpoints, param_norm untouched
    added = sweep(src, probe=PROMPTS, measures=[ParameterNorm(), Counting(calls=calls)], out=out)
    assert added.done == [100, 200] and sorted(calls) == [100, 200]
    after = tree(out)
    assert all(after[k] == v for k, v in parts(before).items())
    # add a checkpoint: only it is computed
    calls.clear()
    more = sweep(
        LocalCheckpoints(ckpt_dir),
        probe=PROMPTS,
        measures=[ParameterNorm(), Counting(calls=calls)],
        out=out,
    )
    assert more.done == [300] and more.skipped == [100, 200] and calls == [300]
    ds = open_store(out)
    np.testing.assert_array_equal(ds["counted_norm"].values, ds["param_norm"].values)
    # the same store made in one go is identical
    calls.clear()
    sweep(
        LocalCheckpoints(ckpt_dir),
        probe=PROMPTS,
        measures=[ParameterNorm(), Counting(calls=calls)],
        out=tmp_path / "one.zarr",
    )
    assert open_store(tmp_path / "one.zarr").load().identical(ds.load())


def test_measure_added_later_is_nan_where_missing(tmp_path, ckpt_dir):
    out = tmp_path / "r.zarr"
    sweep(LocalCheckpoints(ckpt_dir), probe=PROMPTS, measures=[ParameterNorm()], out=out)
    sweep(LocalCheckpoints(ckpt_dir, select="300"), probe=PROMPTS, measures=[Counting()], out=out)
    ds = open_store(out)
    assert ds["step"].values.tolist() == [100, 200, 300]
    assert np.isnan(ds["counted_norm"].values[:2]).all()
    np.testing.assert_array_equal(ds["counted_norm"].values[2], ds["param_norm"].values[2])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(dtype="bfloat16"), "dtype"),
        (dict(probe=["Another prompt is"]), "probe_hash"),
        (dict(measures=[ParameterNorm(scale=2.0)]), "measures.param_norm.scale"),
        (dict(name="other-model"), "model"),
    ],
)
def test_mismatched_config_is_refused_naming_the_field(tmp_path, ckpt_dir, change, field):
    out = tmp_path / "r.zarr"
    base = dict(probe=PROMPTS, measures=[ParameterNorm()], out=out)
    sweep(LocalCheckpoints(ckpt_dir, select="100"), **base)
    before = tree(out)
    with pytest.raises(InvalidInputError, match=rf"made with {field}=.* but this run has {field}="):
        sweep(LocalCheckpoints(ckpt_dir), **{**base, **change})
    assert tree(out) == before


def test_other_source_refused_and_overwrite_starts_over(tmp_path, ckpt_dir):
    out = tmp_path / "r.zarr"
    sweep(LocalCheckpoints(ckpt_dir), probe=PROMPTS, measures=[ParameterNorm()], out=out)
    other = tmp_path / "elsewhere" / "ckpts"  # same folder name, so the same model name
    shutil.copytree(ckpt_dir, other)
    with pytest.raises(InvalidInputError, match="source.path="):
        sweep(LocalCheckpoints(other), probe=PROMPTS, measures=[ParameterNorm()], out=out)
    fresh = sweep(
        LocalCheckpoints(other, select="100"),
        probe=PROMPTS,
        measures=[ParameterNorm()],
        out=out,
        overwrite=True,
    )
    assert fresh.done == [100]
    assert open_store(out)["step"].values.tolist() == [100]


def test_refuses_a_folder_it_did_not_write(tmp_path, ckpt_dir):
    mine = tmp_path / "mine.zarr"
    mine.mkdir()
    (mine / "data.txt").write_text("precious")
    with pytest.raises(OutputError):
        sweep(LocalCheckpoints(ckpt_dir), probe=PROMPTS, measures=[ParameterNorm()], out=mine)
    assert (mine / "data.txt").read_text() == "precious"
    with pytest.raises(InvalidInputError, match="not a mechmoe output"):
        open_store(mine)


def test_failing_checkpoint_recorded_then_retried(tmp_path, ckpt_dir):
    out = tmp_path / "r.zarr"
    weights = ckpt_dir / "step_000200" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file")
    summary = sweep(LocalCheckpoints(ckpt_dir), probe=PROMPTS, measures=[ParameterNorm()], out=out)
    assert summary.done == [100, 300] and list(summary.failed) == [200]
    assert "could not load step_000200" in summary.failed[200]
    rec = json.loads((out / "failures" / "step_000000000200.json").read_text())
    assert (
        rec["step"] == 200 and "could not load" in rec["error"] and "Traceback" in rec["traceback"]
    )
    ds = open_store(out)
    assert ds["step"].values.tolist() == [100, 300] and ds.attrs["failed_steps"] == "200"
    # still broken: retried, still recorded
    again = sweep(LocalCheckpoints(ckpt_dir), probe=PROMPTS, measures=[ParameterNorm()], out=out)
    assert list(again.failed) == [200] and again.skipped == [100, 300]
    # fixed: retried and done; the failure record is gone; same as a clean run
    weights.write_bytes(good)
    fixed = sweep(LocalCheckpoints(ckpt_dir), probe=PROMPTS, measures=[ParameterNorm()], out=out)
    assert fixed.done == [200] and fixed.failed == {}
    assert not (out / "failures" / "step_000000000200.json").exists()
    sweep(
        LocalCheckpoints(ckpt_dir),
        probe=PROMPTS,
        measures=[ParameterNorm()],
        out=tmp_path / "c.zarr",
    )
    assert open_store(out).load().identical(open_store(tmp_path / "c.zarr").load())


def test_failing_measure_keeps_the_others(tmp_path, ckpt_dir):
    @dataclass
    class Broken(ParameterNorm):
        name: str = "broken"

        def __call__(self, model, probe):
            raise RuntimeError("boom")

    out = tmp_path / "r.zarr"
    summary = sweep(
        LocalCheckpoints(ckpt_dir, select="100"),
        probe=PROMPTS,
        measures=[ParameterNorm(), Broken()],
        out=out,
    )
    assert "measure 'broken' failed on step_000100: RuntimeError: boom" == summary.failed[100]
    assert "param_norm" in open_store(out)
    # the next run retries only the failed measure
    calls: list[int] = []

    @dataclass
    class Fixed(Counting):
        name: str = "broken"

        def config(self):
            return {"scale": 1.0}  # the same options as Broken, so the store accepts it

    fixed = sweep(
        LocalCheckpoints(ckpt_dir, select="100"),
        probe=PROMPTS,
        measures=[ParameterNorm(), Fixed(calls=calls)],
        out=out,
    )
    assert fixed.failed == {} and calls == [100]


def test_identical_weights_flagged_and_measured_once(tmp_path, checkpoint_builder):
    root = tmp_path / "ck"
    checkpoint_builder(root, (100, 200, 300), same_as={300: 200})
    calls: list[int] = []
    out = tmp_path / "r.zarr"
    summary = sweep(
        LocalCheckpoints(root), probe=PROMPTS, measures=[Counting(calls=calls)], out=out
    )
    assert summary.duplicates == {300: 200} and summary.done == [100, 200]
    assert calls == [100, 200]
    dup = json.loads((out / "duplicates" / "step_000000000300.json").read_text())
    assert dup["label"] == "step_000300"
    ds = open_store(out)
    assert ds["step"].values.tolist() == [100, 200] and ds.attrs["duplicate_steps"] == "300"
    # adding a measure later does not load the duplicate again
    calls.clear()
    again = sweep(
        LocalCheckpoints(root),
        probe=PROMPTS,
        measures=[Counting(calls=calls), ParameterNorm()],
        out=out,
    )
    assert again.duplicates == {300: 200} and again.done == [100, 200] and calls == []


def _result(step, h, value):
    ds = xr.Dataset({"score": ("layer", [value, value + 1.0])}, coords={"layer": [0, 1]})
    return CheckpointResult(Checkpoint(step, label=f"s{step}"), weights_hash=h, datasets={"m": ds})


def test_duplicate_order_does_not_change_the_store(tmp_path):
    """Workers finish in any order: the later step is the duplicate either way."""
    in_order, reverse = tmp_path / "a.zarr", tmp_path / "b.zarr"
    for path, order in ((in_order, (100, 200, 300)), (reverse, (300, 200, 100))):
        store = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}})
        hashes = {100: "h1", 200: "h2", 300: "h2"}
        for step in order:
            store.write(_result(step, hashes[step], float(step if step != 300 else 200)))
    assert tree(in_order) == tree(reverse)
    assert open_store(in_order).load().identical(open_store(reverse).load())
    assert sorted(p.name for p in (reverse / "duplicates").iterdir()) == ["step_000000000300.json"]
    assert not (reverse / "checkpoints" / "step_000000000300").exists()


def test_changed_weights_of_a_measured_step_are_a_failure(tmp_path):
    store = TrajectoryStore.create_or_open(tmp_path / "a.zarr", {"model": "x"}, {"m": {}, "n": {}})
    assert store.write(_result(100, "h1", 1.0)) == "done"
    res = _result(100, "h9", 1.0)
    res.datasets = {"n": res.datasets["m"]}
    assert store.write(res) == "failed"
    assert "weights of s100 changed" in store.index.failures[100]["error"]


def test_readers_ignore_temporaries(tmp_path):
    path = tmp_path / "a.zarr"
    store = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}})
    store.write(_result(100, "h1", 1.0))
    # what a writer killed mid-write leaves behind
    stale = path / "checkpoints" / "step_000000000200" / ".m.999999.0badf00d.tmp"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("half")
    ds = open_store(path)
    assert ds["step"].values.tolist() == [100]


def test_export_netcdf_round_trip(tmp_path, ckpt_dir):
    out = tmp_path / "r.zarr"
    sweep(LocalCheckpoints(ckpt_dir), probe=PROMPTS, measures=[ParameterNorm(), "hit"], out=out)
    nc = export_netcdf(out, tmp_path / "r.nc")
    back = xr.open_dataset(nc, engine="h5netcdf").load()
    ds = open_store(out).load()
    assert back.attrs.pop("mechmoe_kind") == "trajectory"
    back.attrs.pop("mechmoe_format")
    xr.testing.assert_identical(back, ds)
    with pytest.raises(OutputError, match="--overwrite"):
        export_netcdf(out, tmp_path / "r.nc")
    export_netcdf(out, tmp_path / "r.nc", overwrite=True)


def test_bad_arguments(tmp_path, ckpt_dir):
    src = LocalCheckpoints(ckpt_dir)
    with pytest.raises(InvalidInputError, match="needs executor='dask'"):
        sweep(src, probe=PROMPTS, measures=[ParameterNorm()], out=tmp_path / "r.zarr", workers=2)
    with pytest.raises(InvalidInputError, match="listed twice"):
        sweep(
            src, probe=PROMPTS, measures=[ParameterNorm(), ParameterNorm()], out=tmp_path / "r.zarr"
        )
    with pytest.raises(InvalidInputError, match="unknown measure"):
        sweep(src, probe=PROMPTS, measures=["nope_lpi"], out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()
