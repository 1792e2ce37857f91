"""Kill a real sweep process (SIGKILL) at several points; rerunning must give the same store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

from mechmoe.probes import load_probe
from mechmoe.trajectory import LocalCheckpoints, open_store, sweep
from mechmoe.trajectory.store import PAUSE_ENV
from mechmoe.trajectory.sweep import ParameterNorm

SCRIPT = """
import sys
from mechmoe.probes import load_probe
from mechmoe.trajectory import LocalCheckpoints, sweep
from mechmoe.trajectory.sweep import ParameterNorm
probe = load_probe("country_capital_city").head(3)
sweep(LocalCheckpoints(sys.argv[1]), probe=probe, measures=[ParameterNorm(), "hit"], out=sys.argv[2])
print("finished")
"""


def tree(path: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out[str(rel)] = p.read_bytes()
    return out


def start(ckpts: Path, out: Path, pause: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, PAUSE_ENV: str(pause)}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(ckpts), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(proc: subprocess.Popen, found, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if found():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before the kill point:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("kill point never reached")


def committed(out: Path) -> list[Path]:
    return [
        p.parent for p in out.glob("checkpoints/step_*/*/checkpoint.json") if "/." not in str(p)
    ]


def temporaries(out: Path) -> list[Path]:
    return list(out.glob("checkpoints/step_*/.*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_checkpoints):
    root = tmp_path_factory.mktemp("resume")
    ckpts = root / "ckpts"
    ckpts.mkdir()
    for f in tiny_checkpoints:
        shutil.copytree(f, ckpts / f.name)
    ref = root / "ref.zarr"
    probe = load_probe("country_capital_city").head(3)
    summary = sweep(
        LocalCheckpoints(ckpts), probe=probe, measures=[ParameterNorm(), "hit"], out=ref
    )
    assert summary.done == [100, 200, 300] and not summary.failed, summary
    return ckpts, ref


def _rerun_and_compare(ckpts: Path, out: Path, ref: Path) -> None:
    proc = start(ckpts, out)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "finished" in output, output
    assert not temporaries(out)
    assert open_store(out).load().identical(open_store(ref).load())
    assert tree(out) == tree(ref)
    # plain xarray reads the same from the store's root
    assert xr.open_zarr(out).load().identical(open_store(ref).load())


def test_sigkill_after_the_first_checkpoint(tmp_path, reference):
    ckpts, ref = reference
    out = tmp_path / "run.zarr"
    proc = start(ckpts, out, pause=2.0)
    wait_for(proc, lambda: len(committed(out)) >= 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= len(committed(out)) < 3
    # what is there is readable and complete for the steps it shows
    partial = open_store(out)
    assert set(partial["step"].values.tolist()) < {100, 200, 300}
    _rerun_and_compare(ckpts, out, ref)


def test_sigkill_in_the_middle_of_a_write(tmp_path, reference):
    ckpts, ref = reference
    out = tmp_path / "run.zarr"
    proc = start(ckpts, out, pause=60.0)
    # the writer pauses with the part's data complete in its temporary, not yet renamed
    wait_for(proc, lambda: any((p / "checkpoint.json").exists() for p in temporaries(out)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert temporaries(out) and not committed(out)  # the data exist only as a temporary
    with pytest.raises(Exception, match="no measured checkpoint yet"):
        open_store(out)
    _rerun_and_compare(ckpts, out, ref)


def test_sigkill_while_creating_the_store(tmp_path, reference):
    ckpts, ref = reference
    out = tmp_path / "run.zarr"
    proc = start(ckpts, out, pause=60.0)
    # the store folder appears atomically (with its config) before any checkpoint is loaded
    wait_for(proc, lambda: out.exists())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "config.json").is_file()
    _rerun_and_compare(ckpts, out, ref)


def test_a_second_writer_is_refused_and_running_again_later_works(tmp_path, reference):
    """Two sweeps into one store: the second is refused at once, naming the first; run
    again once the first has finished (the advice), it finds the store complete."""
    from mechmoe.core.errors import OutputError

    ckpts, ref = reference
    out = tmp_path / "run.zarr"
    proc = start(ckpts, out, pause=3.0)
    wait_for(proc, lambda: bool(temporaries(out)))
    probe = load_probe("country_capital_city").head(3)
    with pytest.raises(OutputError, match=rf"another mechmoe process \(pid {proc.pid}\); wait"):
        sweep(LocalCheckpoints(ckpts), probe=probe, measures=[ParameterNorm(), "hit"], out=out)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "finished" in output, output
    again = sweep(LocalCheckpoints(ckpts), probe=probe, measures=[ParameterNorm(), "hit"], out=out)
    assert again.skipped == [100, 200, 300] and again.done == []
    assert open_store(out).load().identical(open_store(ref).load())
