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

The writer is four modules: :mod:`mechmoe.core.marks` (how an output says what it is),
:mod:`mechmoe.core.manifest` (checksums and which files are mechmoe's),
:mod:`mechmoe.core.atomic` (temporaries, signals, cleanup) and this one (the checked
destination and the atomic commit). Every public name is importable from here.

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
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mechmoe.core.atomic import OS_REASONS as _OS_REASONS
from mechmoe.core.atomic import SignalGuard as _SignalGuard
from mechmoe.core.atomic import clean_stale, remove_tree
from mechmoe.core.atomic import drain_background_writers as _drain_background_writers
from mechmoe.core.atomic import find_os_error as _find_os_error
from mechmoe.core.atomic import link_or_copy as _link_or_copy
from mechmoe.core.atomic import remove as _remove
from mechmoe.core.atomic import tmp_sibling as _tmp_sibling
from mechmoe.core.errors import OutputError
from mechmoe.core.manifest import (
    check_manifest,
    checksummed_zarr_encoding,
    file_checksum,
    file_manifest,
    foreign_files,
    verify_output,
    zarr_location,
)
from mechmoe.core.manifest import walk_files as _walk_files
from mechmoe.core.marks import (
    FOLDER_SUFFIXES,
    LOCK_NAME,
    LOG_NAME,
    MARKER_FORMAT,
    MARKER_KEY,
    MARKER_NAME,
    is_folder_path,
    marker,
    marker_line,
    recognize,
    register_recognizer,
)
from mechmoe.core.marks import check_kind as _check_kind
from mechmoe.core.marks import has_recognizer as _has_recognizer

# ---- moving a finished temporary into place -------------------------------------------
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
        if _has_recognizer(path.suffix) and recognize(tmp, suffix=path.suffix) != (self.kind):
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
