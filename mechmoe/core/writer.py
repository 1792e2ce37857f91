"""The one safe way mechmoe writes a file or a folder.

Every command that writes goes through :func:`prepare_output`, called *before* any work
starts, and then :meth:`Output.writing` (or :meth:`Output.child` for a folder that grows
over time). The guarantees, documented for users in ``docs/files.md``:

* The destination is checked first: its folder exists and is writable, the path has the
  right form (a ``.zarr`` store or a suffix-less name is a folder, anything else a single
  file), and whatever is already there is either nothing, an empty folder, or an earlier
  mechmoe output of the same kind. A previous output is replaced only with
  ``overwrite=True`` (``--overwrite``); anything mechmoe did not write is never touched.
* Data go to a hidden temporary sibling ``.{name}.{pid}.{token}.tmp``. Only when the
  write is complete is it marked and renamed into place in one atomic step (for a folder
  over an earlier one, an atomic exchange where the OS offers it), so ``path`` holds
  either the complete previous output or the complete new one.
* On any exception, ``SIGINT`` or ``SIGTERM`` the temporary is removed (after zarr's
  background I/O has finished) and ``path`` is left as it was. A full disk or a denied
  write becomes one :class:`~mechmoe.core.errors.OutputError`. Temporaries left by a process
  that was killed outright (``SIGKILL``, power loss) carry its pid; the next writer of the
  same name removes them once that process is gone, and readers skip dot-names.
* A folder's marker records the size and CRC-32C of every file written
  (:func:`verify_output` compares them); a folder that grows logs what each
  :meth:`Output.child` added. Replacing an output (or a child) replaces only those files:
  anything a user added is carried over into the new one (:func:`foreign_files`).
* :meth:`Output.lock` makes one process the only writer of a folder that grows.

How an earlier output is recognised (its *kind* is a short name such as ``"result"``):

* a folder holds a marker file ``.mechmoe.json`` with ``{"mechmoe_kind": kind, ...}``,
  written by the writer itself;
* a single file carries :data:`MARKER_KEY` inside it, put there by the code that writes
  it: a global attribute of a netCDF (``.nc``) file, a top-level key of a ``.json`` file,
  a ``tEXt`` chunk of a ``.png`` (matplotlib's ``metadata=``), or the text
  :func:`marker_line` near the top of a text file (``.html``, ``.svg``, ``.md``, ``.csv``,
  ``.tsv``, ``.txt``). :meth:`Output.writing` checks the mark before committing.
  Other suffixes can be taught with :func:`register_recognizer`.

Examples
--------
>>> import json, tempfile
>>> from pathlib import Path
>>> from mechmoe.core.writer import prepare_output, recognize, MARKER_KEY
>>> folder = Path(tempfile.mkdtemp())
>>> out = prepare_output(folder / "rel.json", kind="relation")
>>> with out.writing() as tmp:
...     _ = tmp.write_text(json.dumps({MARKER_KEY: "relation", "samples": []}))
>>> recognize(folder / "rel.json")
'relation'
>>> sorted(p.name for p in folder.iterdir())
['rel.json']
>>> prepare_output(folder / "rel.json", kind="relation")
Traceback (most recent call last):
...
mechmoe.core.errors.OutputError: ... already holds a mechmoe relation; pass --overwrite ...
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

from mechmoe.core.errors import OutputError

#: Name of the marker file inside a folder output.
MARKER_NAME = ".mechmoe.json"
#: Ownership log of a folder output that grows (one JSON line per committed child).
LOG_NAME = ".mechmoe.files"
#: Lock file held by the one process that adds to a folder output (:meth:`Output.lock`).
LOCK_NAME = ".mechmoe.lock"
#: Key (attribute, JSON key, PNG text key) naming the kind of a mechmoe output.
MARKER_KEY = "mechmoe_kind"
#: Version of the marker layout.
MARKER_FORMAT = 1
#: Suffixes whose outputs are folders (suffix-less names are folders too).
FOLDER_SUFFIXES = (".zarr",)

_KIND_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.(?P<what>tmp|old)$")
_TEXT_MARK_RE = re.compile(rb"mechmoe_kind\s*[:=]\s*[\"']?([a-z][a-z0-9_.-]*)")


# ---- recognising earlier outputs ----------------------------------------------------------
def marker(kind: str) -> dict[str, Any]:
    """The attributes/keys that mark a single-file output as a mechmoe ``kind``.

    Put them into the file's global attributes (netCDF), top-level keys (JSON) or
    metadata (matplotlib PNG). All values are strings.

    >>> marker("result")["mechmoe_kind"]
    'result'
    """
    _check_kind(kind)
    return {MARKER_KEY: kind, "mechmoe_format": str(MARKER_FORMAT)}


def marker_line(kind: str) -> str:
    """The text that marks a text file (HTML, SVG, Markdown, CSV) as a mechmoe ``kind``.

    Put it in a comment within the first 4 KiB, e.g. ``<!-- mechmoe_kind: report -->``.

    >>> marker_line("report")
    'mechmoe_kind: report'
    """
    _check_kind(kind)
    return f"{MARKER_KEY}: {kind}"


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValueError(f"kind {kind!r} must be a short lower-case name such as 'result'")


def _read_head(path: Path, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _recognize_json(path: Path) -> str | None:
    if path.stat().st_size > 256 * 2**20:
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    kind = data.get(MARKER_KEY) if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _recognize_netcdf(path: Path) -> str | None:
    if _read_head(path, 8) != _HDF5_SIGNATURE:
        return None
    import h5py

    with h5py.File(path, "r") as fh:
        kind = fh.attrs.get(MARKER_KEY)
    if isinstance(kind, bytes):
        kind = kind.decode("utf-8", "replace")
    if hasattr(kind, "item"):  # a numpy scalar or 0-d array
        kind = kind.item()
    return kind if isinstance(kind, str) else None


def _recognize_png(path: Path) -> str | None:
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return None
            length = int.from_bytes(head[:4], "big")
            ctype = head[4:]
            if ctype == b"IDAT" or ctype == b"IEND":
                return None
            body = fh.read(length)
            fh.read(4)  # CRC
            if ctype == b"tEXt" and b"\x00" in body:
                key, value = body.split(b"\x00", 1)
                if key == MARKER_KEY.encode():
                    return value.decode("latin-1")


def _recognize_text(path: Path) -> str | None:
    found = _TEXT_MARK_RE.search(_read_head(path, 4096))
    return found.group(1).decode() if found else None


_RECOGNIZERS: dict[str, Callable[[Path], str | None]] = {
    ".json": _recognize_json,
    ".nc": _recognize_netcdf,
    ".png": _recognize_png,
    **{s: _recognize_text for s in (".html", ".svg", ".md", ".csv", ".tsv", ".txt")},
}


def register_recognizer(suffix: str, recognizer: Callable[[Path], str | None]) -> None:
    """Teach the writer how a single file ending in ``suffix`` says which kind it is.

    ``recognizer(path)`` returns the kind or ``None``; exceptions count as ``None``.
    """
    if not suffix.startswith("."):
        raise ValueError(f"suffix {suffix!r} must start with a dot")
    _RECOGNIZERS[suffix.lower()] = recognizer


def is_folder_path(path: str | os.PathLike[str]) -> bool:
    """Whether an output at ``path`` is a folder (``.zarr`` or no suffix) or a single file."""
    suffix = Path(path).suffix.lower()
    return suffix == "" or suffix in FOLDER_SUFFIXES


def recognize(path: str | os.PathLike[str], *, suffix: str | None = None) -> str | None:
    """The kind of the mechmoe output at ``path``, or ``None`` if it is not one.

    ``suffix`` overrides the file's own (used to check a temporary before renaming).
    Symbolic links are never recognised.
    """
    p = Path(path)
    try:
        if p.is_symlink():
            return None
        if p.is_dir():
            data = json.loads((p / MARKER_NAME).read_text(encoding="utf-8"))
            kind = data.get(MARKER_KEY) if isinstance(data, dict) else None
            return kind if isinstance(kind, str) else None
        if p.is_file():
            fn = _RECOGNIZERS.get((suffix if suffix is not None else p.suffix).lower())
            return fn(p) if fn is not None else None
    except Exception:
        return None
    return None


# ---- what is inside a folder output: checksums and ownership ------------------------------
_WRITER_NAMES = frozenset({MARKER_NAME, LOG_NAME, LOCK_NAME})


def file_checksum(path: str | os.PathLike[str]) -> str:
    """CRC-32C of a file's bytes, as 8 hex digits (the checksum zarr v3's ``crc32c`` uses)."""
    import google_crc32c

    crc = google_crc32c.Checksum()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            crc.update(block)
    return crc.hexdigest().decode()


def _walk_files(folder: Path) -> Iterator[str]:
    """Relative POSIX paths of the files under ``folder``, dot-names skipped, sorted."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(root).relative_to(folder)
        for name in sorted(files):
            if not name.startswith("."):
                yield (base / name).as_posix()


def file_manifest(
    folder: str | os.PathLike[str], files: Iterable[str] | None = None
) -> dict[str, list[Any]]:
    """``{relative path: [size, crc32c]}`` of every file under ``folder`` (dot-names skipped).

    What :func:`check_manifest` later compares the folder with; ``files`` limits it to
    those relative paths.
    """
    folder = Path(folder)
    names = _walk_files(folder) if files is None else sorted(files)
    return {rel: [(folder / rel).stat().st_size, file_checksum(folder / rel)] for rel in names}


def check_manifest(
    folder: str | os.PathLike[str], manifest: dict[str, Any], *, checksums: bool = True
) -> list[tuple[str, str]]:
    """The files of ``manifest`` that are damaged under ``folder``: ``[(path, problem)]``.

    A problem is ``"missing"``, ``"has N bytes instead of M"`` or ``"fails its checksum"``
    (read only with ``checksums``; otherwise sizes alone are compared). Files that are not
    in the manifest are not looked at.
    """
    folder = Path(folder)
    out: list[tuple[str, str]] = []
    for rel, entry in manifest.items():
        try:
            size, crc = int(entry[0]), str(entry[1])
        except (TypeError, ValueError, IndexError):
            out.append((rel, "has an unreadable entry in the manifest"))
            continue
        p = folder / rel
        try:
            found = p.stat().st_size if p.is_file() else None
        except OSError:
            found = None
        if found is None:
            out.append((rel, "missing"))
        elif found != size:
            out.append((rel, f"has {found} bytes instead of {size}"))
        elif checksums and file_checksum(p) != crc:
            out.append((rel, "fails its checksum"))
    return out


def _read_marker(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def verify_output(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Damaged files of a folder output written in one piece (:meth:`Output.writing`).

    Compares every file with the size and CRC-32C recorded in its marker when it was
    written: ``[(relative path, problem)]``, empty when intact (or when the output was
    written before mechmoe recorded checksums).
    """
    folder = Path(path)
    files = _read_marker(folder).get("files")
    if not isinstance(files, dict):
        return []
    return check_manifest(folder, files)


def _ownership(folder: Path) -> tuple[set[str], set[str]] | None:
    """Files and whole trees mechmoe wrote inside ``folder``; ``None``: all of it is mechmoe's.

    From the marker's file list and the log of children. An output written before mechmoe
    kept that record counts as mechmoe's entirely.
    """
    files = _read_marker(folder).get("files")
    if not isinstance(files, dict):
        return None
    owned, trees = set(files), set()
    try:
        lines = (folder / LOG_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("tree"), str):
            trees.add(entry["tree"])
        owned.update(str(f) for f in entry.get("files", []) if isinstance(f, str))
    return owned, trees


def _is_owned(rel: str, owned: set[str], trees: set[str]) -> bool:
    if rel in owned:
        return True
    parts = rel.split("/")
    return any("/".join(parts[:i]) in trees for i in range(1, len(parts) + 1))


def foreign_files(path: str | os.PathLike[str], under: str = "") -> list[str]:
    """Files inside a mechmoe folder output that mechmoe did not write (a user's notes, plots).

    Relative to ``path``; ``under`` limits the answer to that sub-folder. Such files are
    carried over when the output (or the child ``under``) is replaced.
    """
    folder = Path(path)
    found = _ownership(folder)
    if found is None:
        return []
    owned, trees = found
    start = folder / under if under else folder
    if not start.is_dir():
        return []
    out = []
    for root, dirs, files in os.walk(start):
        base = Path(root).relative_to(folder)
        dirs[:] = sorted(d for d in dirs if not _TMP_RE.match(d))
        for name in sorted(files):
            rel = (base / name).as_posix()
            if (base == Path(".") and name in _WRITER_NAMES) or _TMP_RE.match(name):
                continue
            if not _is_owned(rel, owned, trees):
                out.append(rel)
    return sorted(out)


def checksummed_zarr_encoding(ds: Any) -> dict[str, dict[str, Any]]:
    """``to_zarr`` encoding that gives every array of ``ds`` zstd and a CRC-32C per chunk.

    zarr v3 checks the ``crc32c`` codec whenever a chunk is decoded, so a damaged chunk
    fails to read instead of decoding to garbage (write with ``zarr_format=3`` and
    ``write_empty_chunks=True``, so that every chunk exists and a missing one is damage).
    """
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return {
        str(name): {"compressors": (ZstdCodec(level=0), Crc32cCodec())} for name in ds.variables
    }


def zarr_location(rel: str) -> tuple[str | None, str]:
    """``(variable, what)`` of a file inside a zarr v3 group: ``("score", "chunk c/0/1")``.

    ``variable`` is ``None`` for the group's own metadata.
    """
    parts = PurePosixPath(rel).parts
    if len(parts) == 1:
        return None, f"group metadata {rel}"
    name, rest = parts[0], "/".join(parts[1:])
    return name, ("metadata zarr.json" if rest == "zarr.json" else f"chunk {rest}")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---- signals ----------------------------------------------------------------------------
class _SignalGuard:
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

    def __enter__(self) -> _SignalGuard:
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
def _tmp_sibling(path: Path, what: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{what}")


def _remove(path: Path) -> None:
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
        away = _tmp_sibling(path)
        os.rename(path, away)
        shutil.rmtree(away, ignore_errors=True)
    else:
        path.unlink()


def _alive(pid: int) -> bool:
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
        m = _TMP_RE.match(entry.name)
        if m is None or m["name"] != name or _alive(int(m["pid"])):
            continue
        p = Path(entry.path)
        target = parent / name
        if m["what"] == "old" and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.rename(p, target)
        else:
            _remove(p)
        done.append(p)
    return done


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_renameat2_fn: Any = None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; ``False`` where the OS or file system does not offer it."""
    global _renameat2_fn
    if _renameat2_fn is None:
        _renameat2_fn = False
        if sys.platform.startswith("linux"):
            import ctypes

            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
                fn.argtypes += [ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2_fn = fn
    if not _renameat2_fn:
        return False
    import ctypes

    rc = _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _move_into_place(tmp: Path, path: Path, *, replace: bool) -> None:
    """Rename the finished ``tmp`` to ``path``; with ``replace``, swap out what is there."""
    if replace and os.path.lexists(path):
        if tmp.is_dir():
            if _renameat2(tmp, path, _RENAME_EXCHANGE):
                _remove(tmp)  # now holds the previous output
                return
            old = _tmp_sibling(path, "old")
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            _remove(old)
        else:
            os.replace(tmp, path)
        return
    if _renameat2(tmp, path, _RENAME_NOREPLACE):
        return
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "appeared while writing", str(path))
    if tmp.is_dir():
        os.rename(tmp, path)
    else:
        os.link(tmp, path)
        tmp.unlink()


def _drain_background_writers(timeout: float = 300.0) -> None:
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


_OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large for the file system",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission was denied",
    errno.EPERM: "permission was denied",
}


def _find_os_error(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _OS_REASONS:
            return e
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        todo.extend(getattr(e, "exceptions", ()) or ())
    return None


# ---- the output -------------------------------------------------------------------------
@dataclass
class Output:
    """A checked destination, returned by :func:`prepare_output`.

    Attributes
    ----------
    path : Path
        Where the output goes.
    kind : str
        The kind of mechmoe output (``"result"``, ``"relation"``, ...).
    folder : bool
        Whether the output is a folder (``.zarr`` or no suffix) or a single file.
    overwrite, append : bool
        What :func:`prepare_output` was allowed to do with an earlier output.
    previous : bool
        Whether something (an earlier output of this kind, or an empty folder) was there.
    """

    path: Path
    kind: str
    folder: bool
    overwrite: bool = False
    append: bool = False
    previous: bool = False
    _logged: set[str] = field(default_factory=set, repr=False, compare=False)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """Write the whole output to a temporary path, renamed into place on success.

        For a folder output the temporary is an empty folder; for a file, a path that
        does not exist yet. Use a synchronous scheduler for dask-backed data inside.
        A folder's marker records the size and CRC-32C of every file written
        (:func:`verify_output` checks them); files a user added inside an earlier output
        that this one replaces are carried over into the new one.
        """
        if self.previous and not self.overwrite and recognize(self.path) == self.kind:
            raise OutputError(
                f"{self.path} already holds a mechmoe {self.kind}; pass --overwrite "
                "to replace it, or choose another path"
            )
        with self._write(self.path, folder=self.folder, mark=True) as tmp:
            yield tmp

    @contextlib.contextmanager
    def child(self, relpath: str, *, folder: bool | None = None) -> Iterator[Path]:
        """Add ``relpath`` inside a folder output, atomically (see :meth:`writing`).

        The output folder is created (marked) if missing. An existing child is replaced
        only if :func:`prepare_output` got ``overwrite=True``. Names starting with a dot
        are reserved for temporaries and markers.
        """
        if not self.folder:
            raise ValueError(f"{self.path} is a single-file output; it has no children")
        rel = PurePosixPath(relpath)
        if (
            rel.is_absolute()
            or not rel.parts
            or any(part in ("", ".", "..") or part.startswith(".") for part in rel.parts)
        ):
            raise ValueError(f"child {relpath!r} must be a relative path without dot-names")
        self._ensure_folder()
        final = self.path.joinpath(*rel.parts)
        if os.path.lexists(final) and not self.overwrite:
            raise OutputError(
                f"{final} already exists in {self.path}; pass --overwrite to replace it"
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(final.parent, final.name)
        is_folder = is_folder_path(final) if folder is None else folder
        with self._write(final, folder=is_folder, mark=False, rel=rel.as_posix()) as tmp:
            yield tmp

    def own(self, relpath: str) -> None:
        """Record that the tree ``relpath`` inside this folder output is mechmoe's.

        For files a library writes in place (zarr arrays) rather than through
        :meth:`child`: :meth:`writing` and :meth:`child` replace mechmoe's own files only
        and carry everything else over, so what mechmoe writes must be on record.
        """
        self._log({"tree": PurePosixPath(relpath).as_posix()})

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Be the one process adding to this folder output, or fail at once naming the other.

        The lock (``flock`` on ``.mechmoe.lock`` inside the folder) is released when the
        block ends or the process dies, so a crashed writer never blocks the next one.
        """
        try:
            import fcntl
        except ImportError:  # no flock on this platform: nothing to hold
            yield
            return
        self._ensure_folder()
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise OutputError(
                    f"{self.path} is being written by another mechmoe process{who}; wait "
                    "for it to finish and run again (it resumes), or write to another path"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def _log(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True)
        if line in self._logged:
            return
        with open(self.path / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        self._logged.add(line)

    def _ensure_folder(self) -> None:
        if recognize(self.path) == self.kind:
            return
        with self._write(self.path, folder=True, mark=True):
            pass
        self.previous = True

    @contextlib.contextmanager
    def _write(
        self, path: Path, *, folder: bool, mark: bool, rel: str | None = None
    ) -> Iterator[Path]:
        tmp = _tmp_sibling(path)
        guard = _SignalGuard()
        with guard:
            try:
                if folder:
                    tmp.mkdir()
                yield tmp
                guard.defer()
                if not os.path.lexists(tmp):
                    raise RuntimeError(f"nothing was written to the temporary {tmp}")
                written = list(_walk_files(tmp)) if folder else []
                if mark:
                    self._mark(tmp, path, folder=folder)
                    replace = _check_existing(path, self.kind, folder, self.overwrite, self.append)
                else:
                    replace = self.overwrite
                if replace and folder and path.is_dir() and not path.is_symlink():
                    _carry_over(path, tmp, self.path, "" if mark else (rel or ""), written)
                _move_into_place(tmp, path, replace=replace)
                if rel is not None:
                    files = [f"{rel}/{f}" for f in written] if folder else [rel]
                    self._log({"child": rel, "files": files})
            except BaseException as exc:
                guard.defer()
                _drain_background_writers()
                _remove(tmp)
                err = _find_os_error(exc)
                if err is not None and not isinstance(exc, OutputError):
                    kept = " and the earlier one is unchanged" if os.path.lexists(path) else ""
                    raise OutputError(
                        f"could not write {path}: {_OS_REASONS[err.errno or 0]} "
                        f"({err.strerror}); nothing was written{kept}, so free some space "
                        "or choose another folder"
                    ) from None
                raise

    def _mark(self, tmp: Path, path: Path, *, folder: bool) -> None:
        if folder:
            from mechmoe._version import __version__

            info = {
                **marker(self.kind),
                "mechmoe_version": __version__,
                "files": file_manifest(tmp),
            }
            (tmp / MARKER_NAME).write_text(json.dumps(info) + "\n", encoding="utf-8")
            return
        if path.suffix.lower() in _RECOGNIZERS and recognize(tmp, suffix=path.suffix) != (
            self.kind
        ):
            raise RuntimeError(
                f"the file written for {path} does not carry the mark of a mechmoe "
                f"{self.kind}; put mechmoe.core.writer.marker({self.kind!r}) in it"
            )


def _carry_over(old: Path, tmp: Path, root: Path, rel: str, written: list[str]) -> None:
    """Put the files a user added inside ``old`` into ``tmp``, which is about to replace it.

    ``root`` is the output folder whose ownership record applies and ``rel`` the path of
    ``old`` inside it (empty for the output itself). The files are hard-linked (copied
    where links fail), so the user's files are in both until the swap: an interruption at
    any point loses nothing. A user's file at a path the new output writes is refused.
    """
    users = foreign_files(root, under=rel)
    if not users:
        return
    prefix = f"{rel}/" if rel else ""
    local = [u[len(prefix) :] for u in users]
    clash = sorted(set(local) & set(written))
    if clash:
        shown = ", ".join(clash[:5]) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
        raise OutputError(
            f"{old} holds files you added ({shown}) at paths the new output writes; mechmoe "
            "keeps your files, so move them out of the folder and run again"
        )
    for name in local:
        _link_or_copy(old / name, tmp / name)


def _check_existing(path: Path, kind: str, folder: bool, overwrite: bool, append: bool) -> bool:
    """Whether something replaceable is at ``path``; raise if it must not be touched."""
    if not os.path.lexists(path):
        return False
    if path.is_symlink():
        raise OutputError(
            f"{path} is a symbolic link; mechmoe does not replace links, so choose another path"
        )
    if folder and not path.is_dir():
        raise OutputError(
            f"{path} is a file, but a mechmoe {kind} there would be a folder; "
            "mechmoe leaves it alone, so choose another path"
        )
    if not folder and path.is_dir():
        raise OutputError(
            f"{path} is a folder, but a mechmoe {kind} there would be a single file; "
            "mechmoe leaves it alone, so choose another path"
        )
    if folder:
        with os.scandir(path) as it:
            if next(it, None) is None:
                return True  # an empty folder: nothing to lose
    found = recognize(path)
    if found == kind:
        if overwrite or (append and folder):
            return True
        if append:
            raise OutputError(
                f"{path} is a single-file {kind} and cannot be extended; pass --overwrite "
                "to replace it, or choose another path"
            )
        raise OutputError(
            f"{path} already holds a mechmoe {kind}; pass --overwrite to replace it, "
            "or choose another path"
        )
    if found is not None:
        raise OutputError(f"{path} holds a mechmoe {found}, not a {kind}; choose another path")
    raise OutputError(
        f"{path} already exists and was not written by mechmoe; mechmoe never replaces "
        "what it did not write, so choose another path or move it away"
    )


def _probe_writable(parent: Path, name: str) -> bool:
    probe = parent / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        probe.unlink()
    return True


def prepare_output(
    path: str | os.PathLike[str],
    *,
    kind: str,
    overwrite: bool = False,
    append: bool = False,
    folder: bool | None = None,
) -> Output:
    """Check an output destination before any work starts.

    Parameters
    ----------
    path : str or PathLike
        The output. ``.zarr`` and suffix-less names are folders, anything else a file.
    kind : str
        Which mechmoe output this is; only an earlier output of the same kind is replaced.
    overwrite : bool
        Replace an earlier output of this kind (the CLI's ``--overwrite``).
    append : bool
        Add children to an earlier folder output of this kind (:meth:`Output.child`).
    folder : bool, optional
        Override the folder/file decision made from the suffix.

    Returns
    -------
    Output

    Raises
    ------
    mechmoe.core.errors.OutputError
        The folder is missing or not writable, the path has the wrong form, or it holds
        something that must not be replaced (one line saying what to do).
    """
    _check_kind(kind)
    try:
        p = Path(os.fspath(path)).expanduser()
    except TypeError:
        raise OutputError(f"output path {path!r} is not a path") from None
    if p.name in ("", ".", ".."):
        raise OutputError(f"output {str(path)!r} needs a file or folder name")
    if "\x00" in str(p):
        raise OutputError(f"output {str(path)!r} contains a NUL character")
    is_folder = is_folder_path(p) if folder is None else folder
    parent = p.absolute().parent
    if not parent.exists():
        raise OutputError(
            f"folder {parent} for output {p} does not exist; create it first or choose another path"
        )
    if not parent.is_dir():
        raise OutputError(f"{parent} is not a folder, so output {p} cannot be written there")
    if not os.access(parent, os.W_OK | os.X_OK) or not _probe_writable(parent, p.name):
        raise OutputError(
            f"folder {parent} is not writable, so output {p} cannot be written there; "
            "choose another folder"
        )
    previous = _check_existing(p, kind, is_folder, overwrite, append)
    clean_stale(parent, p.name)
    return Output(
        path=p,
        kind=kind,
        folder=is_folder,
        overwrite=overwrite,
        append=append,
        previous=previous,
    )


__all__ = [
    "remove_tree",
    "FOLDER_SUFFIXES",
    "LOCK_NAME",
    "LOG_NAME",
    "MARKER_FORMAT",
    "MARKER_KEY",
    "MARKER_NAME",
    "Output",
    "check_manifest",
    "checksummed_zarr_encoding",
    "clean_stale",
    "file_checksum",
    "file_manifest",
    "foreign_files",
    "is_folder_path",
    "marker",
    "marker_line",
    "prepare_output",
    "recognize",
    "register_recognizer",
    "verify_output",
    "zarr_location",
]
