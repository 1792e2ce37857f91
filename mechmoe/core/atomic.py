"""The file-system side of :mod:`mechmoe.core.writer`: temporaries, signals, cleanup.

Data are written to a hidden temporary sibling ``.{name}.{pid}.{token}.tmp`` (:data:`TMP_RE`
matches it, and the ``.old`` copy kept during a non-atomic swap). This module names,
removes and tidies those temporaries (:func:`clean_stale` removes the ones a killed
process left), holds ``SIGINT``/``SIGTERM`` back while an output is committed
(:class:`SignalGuard`), waits for zarr's background I/O before a temporary is removed,
and turns an ``OSError`` somewhere in an exception's chain into the reason a user reads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

#: A temporary (``tmp``) or a swapped-out previous output (``old``) of the writer.
TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.(?P<what>tmp|old)$")


# ---- signals ----------------------------------------------------------------------------
class SignalGuard:
    """Turn SIGINT/SIGTERM into exceptions while writing, deferring them while committing.

    SIGINT raises :class:`KeyboardInterrupt` and SIGTERM ``SystemExit(143)`` (unless the
    program had its own handler, which is called instead), so ``finally`` blocks run and
    the temporary is removed. Handlers can only be set in the main thread; elsewhere the
    guard does nothing and exceptions alone drive the cleanup.
    """

    def __init__(self) -> None:
        self._old: dict[int, Any] = {}
        self._deferred = False
        self._pending: int | None = None

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old = signal.getsignal(sig)
                if old is None or old == signal.SIG_IGN:
                    continue
                self._old[sig] = old
                signal.signal(sig, self._handle)
        return self

    def defer(self) -> None:
        """From now on, hold signals until the guard exits."""
        self._deferred = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._deferred:
            self._pending = signum
            return
        self._fire(signum, frame)

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        old = self._old.get(signum)
        if callable(old) and old is not signal.default_int_handler:
            old(signum, frame)
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        pending, self._pending = self._pending, None
        if pending is not None:
            self._deferred = False
            self._fire(pending, None)


# ---- file-system helpers ----------------------------------------------------------------
def tmp_sibling(path: Path, what: str = "tmp") -> Path:
    """A fresh hidden sibling of ``path`` that :data:`TMP_RE` matches, naming this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{what}")


def remove(path: Path) -> None:
    """Remove a file or folder tree if present (never follows links)."""
    for _ in range(3):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            return
        except OSError:
            pass
        if not os.path.lexists(path):
            return


def remove_tree(path: Path) -> None:
    """Remove a folder atomically for readers (renamed to a temporary sibling first, so
    no reader sees it half removed), or a file; nothing if ``path`` does not exist."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        away = tmp_sibling(path)
        os.rename(path, away)
        shutil.rmtree(away, ignore_errors=True)
    else:
        path.unlink()


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (this one always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def clean_stale(parent: str | os.PathLike[str], name: str) -> list[Path]:
    """Remove temporaries of ``parent / name`` left by processes that no longer run.

    A ``.old`` copy (the previous output during a non-atomic swap) is put back when
    ``name`` itself is missing. Returns what was removed or restored.
    """
    parent = Path(parent)
    done: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return done
    for entry in entries:
        m = TMP_RE.match(entry.name)
        if m is None or m["name"] != name or alive(int(m["pid"])):
            continue
        p = Path(entry.path)
        target = parent / name
        if m["what"] == "old" and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.rename(p, target)
        else:
            remove(p)
        done.append(p)
    return done


def drain_background_writers(timeout: float = 300.0) -> None:
    """Wait until zarr's I/O thread has no write in flight (it outlives an interrupt)."""
    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0] if sync is not None else None
    if loop is None or loop.is_closed() or not loop.is_running():
        return
    import asyncio

    async def _wait_others() -> None:
        me = asyncio.current_task()
        while True:
            others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not others:
                return
            await asyncio.wait(others)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(_wait_others(), loop).result(timeout)


#: The ``errno`` values a user can act on, and how a message says them.
OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large for the file system",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission was denied",
    errno.EPERM: "permission was denied",
}


def find_os_error(exc: BaseException) -> OSError | None:
    """The first ``OSError`` of :data:`OS_REASONS` in ``exc``, its causes and its groups."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in OS_REASONS:
            return e
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        todo.extend(getattr(e, "exceptions", ()) or ())
    return None


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (copied where links fail), making ``dst``'s folder."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


__all__ = [
    "OS_REASONS",
    "TMP_RE",
    "SignalGuard",
    "alive",
    "clean_stale",
    "drain_background_writers",
    "find_os_error",
    "link_or_copy",
    "remove",
    "remove_tree",
    "tmp_sibling",
]
