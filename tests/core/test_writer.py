"""The safe writer: destination checks, atomic replacement, cleanup on every exit path.

The signal tests run a real Python process that saves a result over an earlier one,
pause it at a chosen moment of the write (by wrapping one library call in the child
process only), send SIGINT or SIGTERM, and then check that the folder holds exactly
the complete earlier result or the complete new one, and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mechmoe.core import writer
from mechmoe.core.errors import InvalidInputError, OutputError
from mechmoe.core.writer import (
    LOG_NAME,
    MARKER_KEY,
    MARKER_NAME,
    clean_stale,
    marker,
    marker_line,
    prepare_output,
    recognize,
)
from mechmoe.ops.results import open_result, save_result


def _ds(version: int, n: int = 6) -> xr.Dataset:
    return xr.Dataset(
        {"score": ("item", np.arange(n, dtype="float64") + 100 * version)},
        attrs={"version": version},
    )


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _write_json(out, kind: str, payload: dict) -> None:
    with out.writing() as tmp:
        tmp.write_text(json.dumps({**marker(kind), **payload}))


# ---- what prepare_output accepts and refuses ----------------------------------------------
def test_nothing_there_is_fine_and_nothing_is_created(tmp_path):
    out = prepare_output(tmp_path / "r.zarr", kind="result")
    assert out.folder and not out.previous and out.path == tmp_path / "r.zarr"
    assert not prepare_output(tmp_path / "r.nc", kind="result").folder
    assert prepare_output(tmp_path / "probes", kind="probes").folder
    assert _listing(tmp_path) == []  # checking writes nothing (the probe file is gone)


def test_earlier_output_needs_overwrite(tmp_path):
    path = tmp_path / "rel.json"
    _write_json(prepare_output(path, kind="relation"), "relation", {"v": 1})
    with pytest.raises(OutputError, match=r"already holds a mechmoe relation; pass --overwrite"):
        prepare_output(path, kind="relation")
    _write_json(prepare_output(path, kind="relation", overwrite=True), "relation", {"v": 2})
    assert json.loads(path.read_text())["v"] == 2
    assert _listing(tmp_path) == ["rel.json"]


def test_other_kind_is_refused_even_with_overwrite(tmp_path):
    path = tmp_path / "x.json"
    _write_json(prepare_output(path, kind="relation"), "relation", {})
    with pytest.raises(OutputError, match="holds a mechmoe relation, not a report"):
        prepare_output(path, kind="report", overwrite=True)


@pytest.mark.parametrize("name", ["x.zarr", "x.nc", "x.json", "folder"])
def test_foreign_things_are_never_touched(tmp_path, name):
    path = tmp_path / name
    if writer.is_folder_path(path):
        path.mkdir()
        (path / "notes.txt").write_text("mine")
        before = {"notes.txt": "mine"}
    else:
        path.write_text("mine")
        before = None
    with pytest.raises(OutputError, match="was not written by mechmoe"):
        prepare_output(path, kind="result", overwrite=True)
    if before is None:
        assert path.read_text() == "mine"
    else:
        assert {p.name: p.read_text() for p in path.iterdir()} == before


def test_wrong_form_and_links_are_refused(tmp_path):
    (tmp_path / "file.zarr").write_text("a plain file")
    with pytest.raises(
        OutputError, match="is a file, but a mechmoe result there would be a folder"
    ):
        prepare_output(tmp_path / "file.zarr", kind="result", overwrite=True)
    (tmp_path / "dir.nc").mkdir()
    with pytest.raises(OutputError, match="is a folder, but a mechmoe result there would be a"):
        prepare_output(tmp_path / "dir.nc", kind="result", overwrite=True)
    save_result(_ds(1), tmp_path / "real.nc")
    (tmp_path / "link.nc").symlink_to(tmp_path / "real.nc")
    with pytest.raises(OutputError, match="symbolic link"):
        prepare_output(tmp_path / "link.nc", kind="result", overwrite=True)
    assert (tmp_path / "file.zarr").read_text() == "a plain file"


def test_empty_folder_may_be_used(tmp_path):
    (tmp_path / "out").mkdir()
    out = prepare_output(tmp_path / "out", kind="probes")
    with out.writing() as tmp:
        (tmp / "a.json").write_text("{}")
    assert _listing(tmp_path / "out") == [MARKER_NAME, "a.json"]
    assert recognize(tmp_path / "out") == "probes"


def test_missing_or_unusable_parent(tmp_path, monkeypatch):
    with pytest.raises(OutputError, match=r"folder .*nope.* does not exist; create it first"):
        prepare_output(tmp_path / "nope" / "r.nc", kind="result")
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputError, match="is not a folder"):
        prepare_output(tmp_path / "afile" / "r.nc", kind="result")
    # Tests run as root, for whom permission bits do not block writes: check the logic
    # through os.access, and a really read-only file system below.
    monkeypatch.setattr(writer.os, "access", lambda *a, **k: False)
    with pytest.raises(OutputError, match="is not writable"):
        prepare_output(tmp_path / "r.nc", kind="result")


@contextlib.contextmanager
def _tmpfs(where: Path, options: str):
    """A small tmpfs mounted at ``where`` (needs root); skips where mounting is not allowed."""
    where.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_read_only_folder_is_refused_before_work(tmp_path):
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        with pytest.raises(OutputError, match="is not writable"):
            prepare_output(ro / "r.zarr", kind="result")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        prepare_output(tmp_path / "r.nc", kind="Not A Kind")
    with pytest.raises(OutputError, match="needs a file or folder name"):
        prepare_output("..", kind="result")


# ---- writing ------------------------------------------------------------------------------
def test_previous_output_kept_until_the_new_one_is_complete(tmp_path):
    path = tmp_path / "r.zarr"
    save_result(_ds(1), path)
    out = prepare_output(path, kind="result", overwrite=True)
    with out.writing() as tmp:
        _ds(2).to_zarr(tmp, mode="w")
        assert open_result(path).attrs["version"] == 1  # still the old one while writing
    assert int(open_result(path).attrs["version"]) == 2
    assert _listing(tmp_path) == ["r.zarr"]


@pytest.mark.parametrize("exchange", [True, False])
@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_failure_leaves_previous_and_no_debris(tmp_path, monkeypatch, suffix, exchange):
    if not exchange:  # the two-rename fallback used where renameat2 is missing
        monkeypatch.setattr(writer, "_renameat2", lambda *a: False)
    path = tmp_path / f"r{suffix}"
    save_result(_ds(1), path)
    out = prepare_output(path, kind="result", overwrite=True)
    with pytest.raises(RuntimeError, match="boom"):
        with out.writing() as tmp:
            (tmp / "part" if out.folder else tmp).write_text("half")
            raise RuntimeError("boom")
    assert _listing(tmp_path) == [path.name]
    assert int(open_result(path).attrs["version"]) == 1
    save_result(_ds(3), path, overwrite=True)
    assert int(open_result(path).attrs["version"]) == 3
    assert _listing(tmp_path) == [path.name]


def test_unmarked_file_is_not_committed(tmp_path):
    out = prepare_output(tmp_path / "r.json", kind="relation")
    with pytest.raises(RuntimeError, match="does not carry the mark"):
        with out.writing() as tmp:
            tmp.write_text("{}")
    assert _listing(tmp_path) == []


def test_recognizers(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    save_result(_ds(1), tmp_path / "r.nc")
    assert recognize(tmp_path / "r.nc") == "result"
    _ds(1).to_netcdf(tmp_path / "plain.nc", engine="h5netcdf")
    assert recognize(tmp_path / "plain.nc") is None
    fig = plt.figure()
    fig.savefig(tmp_path / "f.png", metadata=marker("figure"))
    fig.savefig(tmp_path / "g.png")
    plt.close(fig)
    assert recognize(tmp_path / "f.png") == "figure"
    assert recognize(tmp_path / "g.png") is None
    (tmp_path / "r.html").write_text(f"<html><!-- {marker_line('report')} --></html>")
    assert recognize(tmp_path / "r.html") == "report"
    (tmp_path / "n.json").write_text("[1, 2]")
    assert recognize(tmp_path / "n.json") is None
    (tmp_path / "x.bin").write_text(MARKER_KEY)
    assert recognize(tmp_path / "x.bin") is None


# ---- appendable folders -------------------------------------------------------------------
def test_children_are_added_atomically(tmp_path):
    out = prepare_output(tmp_path / "store", kind="trajectory", append=True)
    with out.child("step1/stats.zarr") as tmp:
        _ds(1).to_zarr(tmp, mode="w")
    assert recognize(tmp_path / "store") == "trajectory"
    with pytest.raises(RuntimeError):
        with out.child("step2/stats.zarr") as tmp:
            _ds(2).to_zarr(tmp, mode="w")
            raise RuntimeError("killed")
    store = tmp_path / "store"
    # the marker, and the log of what mechmoe added (so --overwrite keeps the rest)
    assert _listing(store) == [LOG_NAME, MARKER_NAME, "step1", "step2"]
    assert _listing(store / "step1") == ["stats.zarr"]
    assert _listing(store / "step2") == []  # the failed child left nothing, not even a temp
    assert not (tmp_path / "store" / "step2" / "stats.zarr").exists()
    again = prepare_output(tmp_path / "store", kind="trajectory", append=True)
    with pytest.raises(OutputError, match="already exists"):
        with again.child("step1/stats.zarr"):
            pass
    with pytest.raises(OutputError, match="pass --overwrite"):
        prepare_output(tmp_path / "store", kind="trajectory")
    with pytest.raises(ValueError, match="dot-names"):
        with again.child("../escape"):
            pass
    replacing = prepare_output(tmp_path / "store", kind="trajectory", append=True, overwrite=True)
    with replacing.child("step1/stats.zarr") as tmp:
        _ds(5).to_zarr(tmp, mode="w")
    back = xr.open_zarr(tmp_path / "store" / "step1" / "stats.zarr").load()
    assert int(back.attrs["version"]) == 5


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_from_a_killed_process(tmp_path):
    save_result(_ds(1), tmp_path / "r.zarr")
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".r.zarr.{dead}.0123abcd.tmp"
    stale.mkdir()
    (stale / "chunk").write_text("half")
    live = tmp_path / f".r.zarr.{alive}.0123abcd.tmp"
    live.mkdir()
    other = tmp_path / f".s.zarr.{dead}.0123abcd.tmp"
    other.mkdir()
    prepare_output(tmp_path / "r.zarr", kind="result", overwrite=True)
    assert _listing(tmp_path) == [live.name, other.name, "r.zarr"]
    # A .old copy is the previous output caught mid-swap: it is put back, not deleted.
    os.rename(tmp_path / "r.zarr", tmp_path / f".r.zarr.{dead}.89abcdef.old")
    assert clean_stale(tmp_path, "r.zarr")
    assert int(open_result(tmp_path / "r.zarr").attrs["version"]) == 1


# ---- a full disk --------------------------------------------------------------------------
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    save_result(_ds(1), tmp_path / "r.nc")
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return Full(fh) if "w" in mode and str(file).endswith(".tmp") else fh

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(OutputError) as err:
        save_result(_ds(2), tmp_path / "r.nc", overwrite=True)
    assert "the disk is full" in str(err.value) and "earlier one is unchanged" in str(err.value)
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert _listing(tmp_path) == ["r.nc"]
    assert int(open_result(tmp_path / "r.nc").attrs["version"]) == 1


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_real_full_disk(tmp_path, suffix):
    with _tmpfs(tmp_path / "small", "size=64k") as small:
        path = small / f"r{suffix}"
        save_result(_ds(1), path)
        with pytest.raises(OutputError, match="the disk is full"):
            save_result(_ds(2, n=40_000), path, overwrite=True)  # 320 kB of data
        assert _listing(small) == [path.name]
        assert int(open_result(path).attrs["version"]) == 1


# ---- signals in a real process ------------------------------------------------------------
_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    from pathlib import Path

    # Python leaves SIGINT ignored when it starts ignored (a background job, nohup): this
    # process stands for an interactive one, so it sets the handler the test relies on.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import numpy as np, xarray as xr
    from mechmoe.core import writer
    from mechmoe.ops.results import save_result

    path, moment, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])

    sent = ready.with_suffix(".sent")

    def pause():
        # Wait for the signal; while renaming into place it is held back until the end.
        ready.write_text("paused")
        for _ in range(2400):
            if sent.exists():
                break
            time.sleep(0.05)
        for _ in range(20):
            time.sleep(0.05)
        if moment != "commit":
            raise SystemExit("the signal never came")

    if moment == "before-data":
        real = xr.Dataset.to_zarr if path.endswith(".zarr") else xr.Dataset.to_netcdf
        def hooked(self, *a, **k):
            pause()
            return real(self, *a, **k)
        setattr(xr.Dataset, real.__name__, hooked)
    elif moment == "after-data":
        real = xr.Dataset.to_zarr if path.endswith(".zarr") else xr.Dataset.to_netcdf
        def hooked(self, *a, **k):
            out = real(self, *a, **k)
            pause()
            return out
        setattr(xr.Dataset, real.__name__, hooked)
    elif moment == "zarr-io":  # the write is in flight on zarr's own I/O thread
        from zarr.storage import LocalStore
        real_set = LocalStore.set
        async def slow_set(self, key, value):
            ready.write_text("writing")
            await asyncio.sleep(0.3)
            return await real_set(self, key, value)
        LocalStore.set = slow_set
    elif moment == "commit":
        real_move = writer._move_into_place
        def hooked(*a, **k):
            pause()
            return real_move(*a, **k)
        writer._move_into_place = hooked

    if len(sys.argv) > 4:  # the command line itself: mechmoe ARGS...
        from mechmoe.cli import main
        sys.argv = ["mechmoe", *sys.argv[4:]]
        main()
    ds = xr.Dataset({"score": ("item", np.arange(2000.0) + 200)}, attrs={"version": 2})
    try:
        save_result(ds, path, overwrite=True)
    except KeyboardInterrupt:
        sys.exit(130)
    """
)


def _run_interrupted(
    tmp_path: Path, path: Path, moment: str, sig: int, cli: tuple[str, ...] = ()
) -> int:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), moment, str(ready), *cli],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode())
            assert time.monotonic() < deadline, "the child never reached the pause"
            time.sleep(0.02)
        proc.send_signal(sig)
        ready.with_suffix(".sent").write_text("sent")
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    for done in (ready, ready.with_suffix(".sent"), script):
        done.unlink()
    return proc.returncode


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    ("suffix", "moment"),
    [
        (".zarr", "before-data"),
        (".zarr", "zarr-io"),
        (".zarr", "after-data"),
        (".zarr", "commit"),
        (".nc", "after-data"),
        (".nc", "commit"),
    ],
)
def test_signal_during_save(tmp_path, suffix, moment, sig):
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / f"r{suffix}"
    save_result(_ds(1), path)
    rc = _run_interrupted(tmp_path, path, moment, sig)
    assert rc == (130 if sig == signal.SIGINT else 128 + signal.SIGTERM)
    time.sleep(0.5)  # anything a background writer still did would show now
    assert _listing(folder) == [path.name]
    back = open_result(path)
    # Signals wait while the finished output is being renamed into place: then the new
    # result is complete; at any earlier moment the earlier result is kept whole.
    expected = _ds(1) if moment != "commit" else None
    if expected is not None:
        xr.testing.assert_equal(back.drop_attrs(), expected.drop_attrs())
    else:
        np.testing.assert_array_equal(back["score"].values, np.arange(2000.0) + 200)
    assert int(back.attrs["version"]) == (1 if moment != "commit" else 2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_cli_save(tmp_path, sig):
    """``mechmoe route --out r.zarr --overwrite`` interrupted while its data are written."""
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "r.zarr"
    save_result(_ds(1), path)
    cli = ("route", "tiny:olmoe", "--ban", "0:1", "--prompt", "Hi", "--out", str(path))
    rc = _run_interrupted(tmp_path, path, "after-data", sig, (*cli, "--overwrite"))
    assert rc == (130 if sig == signal.SIGINT else 128 + signal.SIGTERM)
    time.sleep(0.5)
    assert _listing(folder) == ["r.zarr"]
    xr.testing.assert_equal(open_result(path).drop_attrs(), _ds(1).drop_attrs())


@pytest.fixture
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt in this process, even if pytest started with SIGINT
    ignored (``nohup make test &``); the handler is put back afterwards."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("drain", [True, False], ids=["drained", "not-drained"])
def test_interrupt_while_zarr_writes_in_background(tmp_path, monkeypatch, drain, sigint_raises):
    """SIGINT reaches the main thread while zarr's I/O thread is still writing chunks: the
    writer waits for that thread before removing the temporary, else the thread would
    recreate it after the cleanup (the check is shown to fail without the wait)."""
    import asyncio
    import threading

    from zarr.storage import LocalStore

    if not drain:
        monkeypatch.setattr(writer, "_drain_background_writers", lambda *a, **k: None)
    real_set = LocalStore.set
    started = threading.Event()

    async def slow_set(self, key, value):
        started.set()
        await asyncio.sleep(1.0)  # long enough for the interrupt and cleanup to happen first
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", slow_set)
    path = tmp_path / "r.zarr"
    big = xr.Dataset({f"v{i}": ("item", np.arange(50.0)) for i in range(20)})
    killer = threading.Thread(
        target=lambda: started.wait(30) and os.kill(os.getpid(), signal.SIGINT)
    )
    killer.start()
    with pytest.raises(KeyboardInterrupt):
        save_result(big, path)
    killer.join()
    monkeypatch.undo()
    writer._drain_background_writers()  # let a still-running background writer finish
    leftovers = _listing(tmp_path)
    if drain:
        assert leftovers == []
    else:
        assert leftovers != []  # the failure the wait prevents
        for p in tmp_path.iterdir():
            writer._remove(p)


def test_result_suffix_is_checked(tmp_path):
    with pytest.raises(InvalidInputError, match=r"\.zarr or \.nc"):
        save_result(_ds(1), tmp_path / "r.csv")


_NOHUP = "MECHMOE_TEST_SIGINT_IGNORED"


@pytest.mark.skipif(bool(os.environ.get(_NOHUP)), reason="already the nohup-like run")
def test_signal_tests_pass_when_started_with_sigint_ignored():
    """``nohup make test &``: the suite starts with SIGINT ignored; the signal tests set the
    handlers they need, so they pass all the same (run here in a pytest started so)."""

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    env = {**os.environ, _NOHUP: "1"}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
        + ["-k", "(SIGINT or interrupt_while or sigint_is_ignored) and not started_with"],
        preexec_fn=ignore_sigint,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    summary = res.stdout.strip().splitlines()[-1]
    assert "10 passed" in summary and "skipped" not in summary, res.stdout


@pytest.mark.skipif(not os.environ.get(_NOHUP), reason="only in the nohup-like run")
def test_sigint_is_ignored_when_it_was_ignored_at_start(tmp_path):
    """A write in a process that ignores SIGINT (nohup) is not interrupted by it."""
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    path = tmp_path / "r.zarr"
    out = prepare_output(path, kind="result")
    with out.writing() as tmp:
        _ds(1).to_zarr(tmp, mode="w")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
    assert int(open_result(path).attrs["version"]) == 1


# ---- what mechmoe wrote, and what a user added ---------------------------------------------
def test_overwrite_keeps_files_a_user_added_to_a_result(tmp_path):
    path = tmp_path / "r.zarr"
    save_result(_ds(1), path)
    (path / "notes.txt").write_text("my notes")
    (path / "plots").mkdir()
    (path / "plots" / "fig.png").write_bytes(b"png")
    (path / "score" / "why.txt").write_text("inside a variable's folder")
    assert writer.foreign_files(path) == ["notes.txt", "plots/fig.png", "score/why.txt"]
    save_result(_ds(2, n=9), path, overwrite=True)
    assert (path / "notes.txt").read_text() == "my notes"
    assert (path / "plots" / "fig.png").read_bytes() == b"png"
    assert (path / "score" / "why.txt").read_text() == "inside a variable's folder"
    back = open_result(path)
    assert int(back.attrs["version"]) == 2 and back["score"].size == 9
    assert _listing(tmp_path) == ["r.zarr"]


def test_overwrite_keeps_files_a_user_added_to_an_appendable_output(tmp_path):
    """Zoo-like outputs: a child replaced with --overwrite keeps what a user put inside it."""
    root = tmp_path / "zoo"
    out = prepare_output(root, kind="zoo", append=True)
    with out.child("moe") as tmp:
        (tmp / "model.safetensors").write_text("v1")
    (root / "moe" / "my-eval.csv").write_text("mine")
    (root / "README.txt").write_text("mine too")
    again = prepare_output(root, kind="zoo", append=True, overwrite=True)
    with again.child("moe") as tmp:
        (tmp / "model.safetensors").write_text("v2")
    assert (root / "moe" / "model.safetensors").read_text() == "v2"
    assert (root / "moe" / "my-eval.csv").read_text() == "mine"
    assert (root / "README.txt").read_text() == "mine too"
    assert writer.foreign_files(root) == ["README.txt", "moe/my-eval.csv"]


def test_overwrite_keeps_files_a_user_added_to_a_trajectory_store(tmp_path):
    from mechmoe.trajectory.sources import Checkpoint
    from mechmoe.trajectory.store import CheckpointResult, TrajectoryStore

    path = tmp_path / "run.zarr"
    store = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}})
    store.write(
        CheckpointResult(Checkpoint(1, label="s1"), weights_hash="h", datasets={"m": _ds(1)})
    )
    (path / "notes.md").write_text("mine")
    (path / "checkpoints" / "README").write_text("mine")
    assert writer.foreign_files(path) == ["checkpoints/README", "notes.md"]
    TrajectoryStore.create_or_open(path, {"model": "y"}, {"m": {}}, overwrite=True)
    assert (path / "notes.md").read_text() == "mine"
    assert (path / "checkpoints" / "README").read_text() == "mine"
    assert not list((path / "checkpoints").glob("step_*"))


def test_overwrite_keeps_files_a_user_added_to_a_report(tmp_path):
    """A report folder (index.html and figures, written in one piece like build_report)."""
    path = tmp_path / "report"
    for version in (1, 2):
        out = prepare_output(path, kind="report", folder=True, overwrite=version > 1)
        with out.writing() as tmp:
            (tmp / "index.html").write_text(f"<!-- {marker_line('report')} --> v{version}")
            (tmp / "fig.png").write_bytes(b"png")
        if version == 1:
            (path / "my-annotations.md").write_text("mine")
    assert (path / "index.html").read_text().endswith("v2")
    assert (path / "my-annotations.md").read_text() == "mine"
    assert writer.verify_output(path) == []


def test_overwrite_refuses_a_users_file_where_the_new_output_writes(tmp_path):
    path = tmp_path / "rel"
    out = prepare_output(path, kind="probes", folder=True)
    with out.writing() as tmp:
        (tmp / "a.json").write_text("{}")
    (path / "b.json").write_text('{"mine": true}')
    again = prepare_output(path, kind="probes", folder=True, overwrite=True)
    with pytest.raises(OutputError, match=r"holds files you added \(b\.json\)"):
        with again.writing() as tmp:
            (tmp / "a.json").write_text("{}")
            (tmp / "b.json").write_text("{}")
    assert (path / "b.json").read_text() == '{"mine": true}'
    assert _listing(tmp_path) == ["rel"]


def test_one_writer_at_a_time(tmp_path):
    out = prepare_output(tmp_path / "store", kind="trajectory", append=True)
    other = prepare_output(tmp_path / "store", kind="trajectory", append=True)
    with out.lock():
        with pytest.raises(OutputError, match=rf"another mechmoe process \(pid {os.getpid()}\)"):
            with other.lock():
                pass
    with other.lock():  # released: the next writer goes on
        pass


# ---- integrity of results -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda p: (p / "score" / "c" / "0").unlink(), "variable 'score', chunk c/0 missing"),
        (
            lambda p: (p / "score" / "c" / "0").write_bytes(
                (p / "score" / "c" / "0").read_bytes()[:9]
            ),
            "variable 'score', chunk c/0 has 9 bytes",
        ),
        (
            lambda p: (p / "score" / "c" / "0").write_bytes(
                b"\x00" * (p / "score" / "c" / "0").stat().st_size
            ),
            "variable 'score', chunk c/0 fails its checksum",
        ),
        (lambda p: (p / "score" / "zarr.json").unlink(), "variable 'score', metadata zarr.json"),
    ],
    ids=["deleted-chunk", "truncated-chunk", "garbage-chunk", "deleted-metadata"],
)
def test_damaged_result_is_named_and_rewriting_it_repairs(tmp_path, damage, fragment):
    from mechmoe.core.errors import DamagedFileError

    path = tmp_path / "r.zarr"
    save_result(_ds(1), path)
    meta = json.loads((path / "score" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]][-1] == "crc32c"
    damage(path)
    with pytest.raises(DamagedFileError) as err:
        open_result(path)
    assert fragment in str(err.value) and "with --overwrite" in str(err.value)
    save_result(_ds(1), path, overwrite=True)  # the advice
    xr.testing.assert_equal(open_result(path).drop_attrs(), _ds(1).drop_attrs())
