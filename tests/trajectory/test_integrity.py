"""A damaged store is found, named, refused, and repaired by recomputing exactly what is damaged.

Each test damages a copy of one reference store (three tiny OLMoE checkpoints, two cheap
measures) the way disks and people do: a chunk deleted, cut in half or overwritten with
garbage, a measure's folder deleted, a part's record deleted or edited, ``config.json`` or a
measure's options deleted. Reading must name the damage (checkpoint, measure, variable,
chunk) and never return NaN or garbage; rerunning the sweep must recompute only the damaged
(checkpoint, measure) pairs, restore lost metadata without recomputing anything, and give a
store identical to the undamaged one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from mechmoe._types import LAYER
from mechmoe.cli import app
from mechmoe.core.errors import DamagedFileError
from mechmoe.trajectory import LocalCheckpoints, open_store, sweep
from mechmoe.trajectory.store import Status
from mechmoe.trajectory.sweep import ParameterNorm

runner = CliRunner()
PROMPTS = ["The capital of France is"]


@dataclass
class Norm(ParameterNorm):
    """``param_norm`` that records the steps it runs on (same name and options)."""

    calls: list[int] | None = None

    def __call__(self, model, probe):
        if self.calls is not None:
            self.calls.append(model.step)
        return super().__call__(model, probe)


@dataclass
class Stats:
    """A second measure with float, integer and scalar variables; records its steps."""

    name: str = "stats"
    variables: tuple[str, ...] = ("sq", "mx", "n_params", "total")
    calls: list[int] | None = None

    def applies_to(self, model) -> bool:
        return True

    def config(self) -> dict:
        return {}

    def __call__(self, model, probe) -> xr.Dataset:
        if self.calls is not None:
            self.calls.append(model.step)
        sq, mx, n = [], [], []
        for layer in model._layers:
            ps = [p.detach().double().numpy() for p in layer.parameters()]
            sq.append(float(sum(np.square(p).sum() for p in ps)))
            mx.append(float(max(np.abs(p).max() for p in ps)))
            n.append(int(sum(p.size for p in ps)))
        return xr.Dataset(
            {
                "sq": (LAYER, np.asarray(sq)),
                "mx": (LAYER, np.asarray(mx)),
                "n_params": (LAYER, np.asarray(n, dtype=np.int64)),
                "total": ((), float(sum(sq))),
            },
            coords={LAYER: np.arange(len(sq))},
            attrs={"note": "test"},
        )


def measures(calls: dict[str, list[int]] | None = None) -> list:
    calls = calls if calls is not None else {}
    return [
        Norm(calls=calls.setdefault("param_norm", [])),
        Stats(calls=calls.setdefault("stats", [])),
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_checkpoints):
    root = tmp_path_factory.mktemp("integrity")
    ckpts = root / "ckpts"
    ckpts.mkdir()
    for f in tiny_checkpoints:
        shutil.copytree(f, ckpts / f.name)
    ref = root / "ref.zarr"
    summary = sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=measures(), out=ref)
    assert summary.done == [100, 200, 300] and not summary.failed
    return ckpts, ref


@pytest.fixture
def store(tmp_path, reference):
    """A private copy of the reference store (the tests damage it)."""
    _, ref = reference
    out = tmp_path / "run.zarr"
    shutil.copytree(ref, out)
    return out


def part(store: Path, step: int) -> Path:
    (found,) = (store / "checkpoints" / f"step_{step:012d}").iterdir()
    return found


def cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))


def edit_record(path: Path) -> None:
    rec = json.loads(path.read_text())
    rec["weights_hash"] = "0" * 32
    path.write_text(json.dumps(rec))


# (damage, fragment of the error, measures the next sweep must recompute at step 200)
PART_DAMAGE = {
    "deleted-chunk": (
        lambda p: (p / "stats.zarr" / "sq" / "c" / "0").unlink(),
        "step 200, measure 'stats', variable 'sq': chunk c/0 missing",
        {"stats"},
    ),
    "truncated-chunk": (
        lambda p: cut(p / "stats.zarr" / "sq" / "c" / "0"),
        "step 200, measure 'stats', variable 'sq': chunk c/0 has",
        {"stats"},
    ),
    "garbage-chunk": (
        lambda p: garble(p / "stats.zarr" / "sq" / "c" / "0"),
        "step 200, measure 'stats', variable 'sq': chunk c/0 fails its checksum",
        {"stats"},
    ),
    "garbage-scalar-chunk": (
        lambda p: garble(p / "stats.zarr" / "total" / "c"),
        "variable 'total': chunk c fails its checksum",
        {"stats"},
    ),
    "deleted-array-metadata": (
        lambda p: (p / "param_norm.zarr" / "param_norm" / "zarr.json").unlink(),
        "step 200, measure 'param_norm', variable 'param_norm': metadata zarr.json missing",
        {"param_norm"},
    ),
    "deleted-measure-folder": (
        lambda p: shutil.rmtree(p / "stats.zarr"),
        "step 200, measure 'stats'",
        {"stats"},
    ),
    "deleted-record": (
        lambda p: (p / "checkpoint.json").unlink(),
        "step 200: checkpoint.json missing",
        {"param_norm", "stats"},
    ),
    "garbage-record": (
        lambda p: (p / "checkpoint.json").write_text('{"step": 2'),
        "checkpoint.json not valid JSON",
        {"param_norm", "stats"},
    ),
    "edited-record": (
        lambda p: edit_record(p / "checkpoint.json"),
        "checkpoint.json fails its checksum",
        {"param_norm", "stats"},
    ),
}


@pytest.mark.parametrize("kind", list(PART_DAMAGE))
def test_damaged_part_is_named_refused_and_recomputed_exactly(kind, store, reference, tmp_path):
    ckpts, ref = reference
    damage, fragment, expected = PART_DAMAGE[kind]
    damage(part(store, 200))
    # reading names the damage and returns nothing from it
    with pytest.raises(DamagedFileError) as err:
        open_store(store)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert "run the same `mechmoe trajectory` command" in str(err.value)
    skipped = open_store(store, damaged="skip")
    assert skipped["step"].values.tolist() == [100, 300]
    assert skipped.attrs["damaged_steps"] == "200"
    expect = open_store(ref).load()
    xr.testing.assert_identical(
        skipped.load().drop_attrs(), expect.sel(step=[100, 300]).drop_attrs()
    )
    # the commands that read stores refuse it in one line, before writing anything
    for args in (["analyze", str(store)], ["report", str(store), "--out", str(tmp_path / "rep")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert res.output.startswith("Error: trajectory store") and fragment in res.output
        assert "Traceback" not in res.output
    assert not (tmp_path / "rep").exists()
    # following the advice: the same sweep recomputes exactly the damaged (step, measure)
    calls: dict[str, list[int]] = {}
    summary = sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=measures(calls), out=store)
    recomputed = {m for m, steps in calls.items() if steps}
    assert recomputed == expected and all(s == [200] for s in calls.values() if s), calls
    assert summary.done == [200] and summary.skipped == [100, 300] and not summary.failed
    assert summary.repaired == {200: ", ".join(sorted(expected))}
    assert "recomputed damaged" in dict((r[0], r[3]) for r in summary.rows())[200]
    assert open_store(store).load().identical(expect)
    assert xr.open_zarr(store).load().identical(expect)
    assert sweep(
        LocalCheckpoints(ckpts), probe=PROMPTS, measures=measures(), out=store
    ).skipped == [
        100,
        200,
        300,
    ]


def test_plain_zarr_readers_also_refuse_a_garbled_chunk(store):
    """The crc32c codec: zarr itself refuses a damaged chunk of a part or of the root."""
    garble(part(store, 200) / "stats.zarr" / "sq" / "c" / "0")
    with pytest.raises(ValueError, match="checksum"):
        xr.open_zarr(part(store, 200) / "stats.zarr", consolidated=False).load()
    garble(store / "mx" / "c" / "1" / "0")
    with pytest.raises(ValueError, match="checksum"):
        xr.open_zarr(store)["mx"].load()


def test_damaged_root_is_rewritten_by_the_next_sweep(tmp_path, reference):
    """The root's chunks are the parts' chunk files (hard links): garbling one garbles the
    stored part too, which the next sweep recomputes; the root is then rewritten."""
    ckpts, ref = reference
    store = tmp_path / "run.zarr"
    sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=measures(), out=store)
    root_chunk = store / "mx" / "c" / "1" / "0"
    part_chunk = part(store, 200) / "stats.zarr" / "mx" / "c" / "0"
    assert root_chunk.stat().st_ino == part_chunk.stat().st_ino  # no extra disk space
    garble(root_chunk)
    with pytest.raises(DamagedFileError, match="step 200, measure 'stats', variable 'mx'"):
        open_store(store)
    calls: dict[str, list[int]] = {}
    sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=measures(calls), out=store)
    assert calls == {"param_norm": [], "stats": [200]}
    assert xr.open_zarr(store).load().identical(open_store(ref).load())


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("deleted", "config.json missing"), ("garbage", "config.json not valid JSON")],
)
def test_lost_config_is_restored_without_recomputing(kind, fragment, store, reference):
    ckpts, ref = reference
    if kind == "deleted":
        (store / "config.json").unlink()
    else:
        (store / "config.json").write_text("{")
    with pytest.raises(DamagedFileError, match=fragment):
        open_store(store)
    calls: dict[str, list[int]] = {}
    summary = sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=measures(calls), out=store)
    assert calls == {"param_norm": [], "stats": []} and summary.skipped == [100, 200, 300]
    assert (store / "config.json").read_bytes() == (ref / "config.json").read_bytes()
    assert open_store(store).load().identical(open_store(ref).load())


def test_lost_config_is_not_restored_for_another_run(store, reference):
    """The parts' records keep the config: a run with another one is refused, naming it."""
    ckpts, _ = reference
    (store / "config.json").unlink()
    with pytest.raises(Exception, match=r"made with dtype='float32' but this run has dtype="):
        sweep(
            LocalCheckpoints(ckpts),
            probe=PROMPTS,
            measures=measures(),
            out=store,
            dtype="bfloat16",
        )
    assert not (store / "config.json").exists()


def test_lost_measure_options_are_restored_without_recomputing(store, reference):
    ckpts, ref = reference
    (store / "measures" / "stats.json").unlink()
    with pytest.raises(DamagedFileError, match="measures/stats.json missing"):
        open_store(store)
    calls: dict[str, list[int]] = {}
    sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=measures(calls), out=store)
    assert calls == {"param_norm": [], "stats": []}
    assert open_store(store).load().identical(open_store(ref).load())
    # and a run that no longer lists the measure restores it too
    (store / "measures" / "stats.json").unlink()
    sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=[Norm()], out=store)
    assert (store / "measures" / "stats.json").is_file()


def test_lost_root_is_rebuilt_from_the_parts(store, reference):
    ckpts, ref = reference
    (store / "zarr.json").unlink()
    shutil.rmtree(store / "sq")
    (store / "mx" / "c" / "2" / "0").unlink()  # plain zarr would read this as NaN
    calls: dict[str, list[int]] = {}
    sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=measures(calls), out=store)
    assert calls == {"param_norm": [], "stats": []}
    assert xr.open_zarr(store).load().identical(open_store(ref).load())


def test_damage_outside_the_selection_is_recorded_as_a_failure(store, reference):
    ckpts, ref = reference
    (part(store, 300) / "stats.zarr" / "mx" / "c" / "0").unlink()
    summary = sweep(
        LocalCheckpoints(ckpts, select="100,200"), probe=PROMPTS, measures=measures(), out=store
    )
    assert list(summary.failed) == [300] and "stored results are damaged" in summary.failed[300]
    assert "select" in summary.failed[300]
    rec = json.loads((store / "failures" / "step_000000000300.json").read_text())
    assert "variable 'mx': chunk c/0 missing" in rec["error"]
    with pytest.raises(DamagedFileError, match="variable 'mx'"):
        open_store(store)
    # with it selected, it is recomputed and the failure is gone
    calls: dict[str, list[int]] = {}
    fixed = sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=measures(calls), out=store)
    assert calls == {"param_norm": [], "stats": [300]} and not fixed.failed
    assert not (store / "failures" / "step_000000000300.json").exists()
    assert open_store(store).load().identical(open_store(ref).load())


def test_unreadable_failure_and_duplicate_records(tmp_path, checkpoint_builder):
    root = tmp_path / "ck"
    checkpoint_builder(root, (100, 200), same_as={200: 100})
    out = tmp_path / "r.zarr"
    first = sweep(LocalCheckpoints(root), probe=PROMPTS, measures=measures(), out=out)
    assert first.duplicates == {200: 100}
    reference = open_store(out).load()
    (out / "duplicates" / "step_000000000200.json").write_text("[")
    (out / "failures").mkdir()
    (out / "failures" / "step_000000000100.json").write_bytes(b"\x00\x01")
    with pytest.raises(DamagedFileError, match="duplicates/step_000000000200.json"):
        open_store(out)
    calls: dict[str, list[int]] = {}
    again = sweep(LocalCheckpoints(root), probe=PROMPTS, measures=measures(calls), out=out)
    assert again.duplicates == {200: 100} and not again.failed
    assert calls == {"param_norm": [], "stats": []}  # the duplicate is found again by its hash
    assert json.loads((out / "duplicates" / "step_000000000200.json").read_text())["step"] == 200
    assert not (out / "failures" / "step_000000000100.json").exists()
    assert open_store(out).load().identical(reference)


def test_a_checkpoint_replaced_by_another_never_costs_the_other_its_results(tmp_path, reference):
    """step200/ on disk replaced by a copy of step300/: step 200 is refused on resume, and
    step 300's stored results stay, measured, not a duplicate."""
    ckpts_ref, _ = reference
    ckpts = tmp_path / "ckpts"
    shutil.copytree(ckpts_ref, ckpts)
    out = tmp_path / "r.zarr"
    sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=[Norm()], out=out)
    stored300 = sorted(p.read_bytes() for p in part(out, 300).rglob("*") if p.is_file())
    shutil.rmtree(ckpts / "step_000200")
    shutil.copytree(ckpts / "step_000300", ckpts / "step_000200")
    # a measure added on resume makes every checkpoint load again
    calls: dict[str, list[int]] = {}
    summary = sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=measures(calls), out=out)
    assert list(summary.failed) == [200] and "weights of step_000200 changed" in summary.failed[200]
    assert summary.duplicates == {} and summary.done == [100, 300]
    assert not (out / "duplicates").exists() or not list((out / "duplicates").iterdir())
    parts300 = list((out / "checkpoints" / "step_000000000300").iterdir())
    assert len(parts300) == 2  # the old part untouched, stats added beside it
    old = next(p for p in parts300 if p.name == "param_norm")
    assert sorted(p.read_bytes() for p in old.rglob("*") if p.is_file()) == stored300
    ds = open_store(out)
    assert ds["step"].values.tolist() == [100, 200, 300]
    assert ds.attrs["failed_steps"] == "200" and ds.attrs["duplicate_steps"] == ""
    assert np.isfinite(ds["sq"].sel(step=300).values).all()


def test_statuses_are_typed(store, reference):
    ckpts, _ = reference
    summary = sweep(LocalCheckpoints(ckpts), probe=PROMPTS, measures=measures(), out=store)
    statuses = {row[2] for row in summary.rows()}
    assert statuses == {Status.SKIPPED} and all(isinstance(s, Status) for s in statuses)
    assert Status.SKIPPED == "skipped" and f"{Status.DONE}" == "done"
