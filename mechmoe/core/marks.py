"""How a mechmoe output says what it is: the marks :mod:`mechmoe.core.writer` checks.

An output's *kind* is a short name such as ``"result"``. A folder output holds a marker
file ``.mechmoe.json`` with ``{"mechmoe_kind": kind, ...}``, written by the writer itself;
a single file carries :data:`MARKER_KEY` inside it, put there by the code that writes it
(a netCDF global attribute, a top-level JSON key, a PNG ``tEXt`` chunk, or
:func:`marker_line` near the top of a text file). :func:`recognize` reads either back;
:func:`register_recognizer` teaches it other suffixes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Name of the marker file inside a folder output.
MARKER_NAME = ".mechmoe.json"
#: Ownership log of a folder output that grows (one JSON line per committed child).
LOG_NAME = ".mechmoe.files"
#: Lock file held by the one process that adds to a folder output (:meth:`~mechmoe.core.writer.Output.lock`).
LOCK_NAME = ".mechmoe.lock"
#: Key (attribute, JSON key, PNG text key) naming the kind of a mechmoe output.
MARKER_KEY = "mechmoe_kind"
#: Version of the marker layout.
MARKER_FORMAT = 1
#: Suffixes whose outputs are folders (suffix-less names are folders too).
FOLDER_SUFFIXES = (".zarr",)

_KIND_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
_TEXT_MARK_RE = re.compile(rb"mechmoe_kind\s*[:=]\s*[\"']?([a-z][a-z0-9_.-]*)")


# ---- recognising earlier outputs ----------------------------------------------------------
def marker(kind: str) -> dict[str, Any]:
    """The attributes/keys that mark a single-file output as a mechmoe ``kind``.

    Put them into the file's global attributes (netCDF), top-level keys (JSON) or
    metadata (matplotlib PNG). All values are strings.

    >>> marker("result")["mechmoe_kind"]
    'result'
    """
    check_kind(kind)
    return {MARKER_KEY: kind, "mechmoe_format": str(MARKER_FORMAT)}


def marker_line(kind: str) -> str:
    """The text that marks a text file (HTML, SVG, Markdown, CSV) as a mechmoe ``kind``.

    Put it in a comment within the first 4 KiB, e.g. ``<!-- mechmoe_kind: report -->``.

    >>> marker_line("report")
    'mechmoe_kind: report'
    """
    check_kind(kind)
    return f"{MARKER_KEY}: {kind}"


def check_kind(kind: str) -> None:
    """Refuse a kind that is not a short lower-case name."""
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


def has_recognizer(suffix: str) -> bool:
    """Whether a single file ending in ``suffix`` can say which kind it is."""
    return suffix.lower() in _RECOGNIZERS


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


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The marker of a folder output (``{}`` when it is missing or unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
