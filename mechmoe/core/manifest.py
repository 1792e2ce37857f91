"""What is inside a folder output: the checksums of its files and who wrote them.

A folder's marker records the size and CRC-32C of every file :mod:`mechmoe.core.writer`
wrote (:func:`file_manifest`; :func:`verify_output` and :func:`check_manifest` compare
them), and a folder that grows logs what each child added. From those records
:func:`foreign_files` tells mechmoe's files from the ones a user added, which are carried
over when an output is replaced. Also here: the checksummed zarr encoding every zarr
output is written with, and how a file inside a zarr group is named in a message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from mechmoe.core.atomic import TMP_RE
from mechmoe.core.marks import LOCK_NAME, LOG_NAME, MARKER_NAME, read_marker

_WRITER_NAMES = frozenset({MARKER_NAME, LOG_NAME, LOCK_NAME})


def file_checksum(path: str | os.PathLike[str]) -> str:
    """CRC-32C of a file's bytes, as 8 hex digits (the checksum zarr v3's ``crc32c`` uses)."""
    import google_crc32c

    crc = google_crc32c.Checksum()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            crc.update(block)
    return crc.hexdigest().decode()


def walk_files(folder: Path) -> Iterator[str]:
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
    names = walk_files(folder) if files is None else sorted(files)
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


def verify_output(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Damaged files of a folder output written in one piece (:meth:`Output.writing`).

    Compares every file with the size and CRC-32C recorded in its marker when it was
    written: ``[(relative path, problem)]``, empty when intact (or when the output was
    written before mechmoe recorded checksums).
    """
    folder = Path(path)
    files = read_marker(folder).get("files")
    if not isinstance(files, dict):
        return []
    return check_manifest(folder, files)


def _ownership(folder: Path) -> tuple[set[str], set[str]] | None:
    """Files and whole trees mechmoe wrote inside ``folder``; ``None``: all of it is mechmoe's.

    From the marker's file list and the log of children. An output written before mechmoe
    kept that record counts as mechmoe's entirely.
    """
    files = read_marker(folder).get("files")
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
        dirs[:] = sorted(d for d in dirs if not TMP_RE.match(d))
        for name in sorted(files):
            rel = (base / name).as_posix()
            if (base == Path(".") and name in _WRITER_NAMES) or TMP_RE.match(name):
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


__all__ = [
    "check_manifest",
    "checksummed_zarr_encoding",
    "file_checksum",
    "file_manifest",
    "foreign_files",
    "verify_output",
    "walk_files",
    "zarr_location",
]
