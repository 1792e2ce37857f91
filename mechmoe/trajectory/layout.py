"""The layout of a trajectory store on disk: its names, records and encodings.

The folder layout is described in :mod:`mechmoe.trajectory.store`; here are the names it
uses, what a sweep's checkpoint became (:class:`Status`), the JSON form every record is
written in (sorted keys, and a CRC-32C over a part's record), and how a measure's Dataset
is written as zarr v3 inside a part.
"""

from __future__ import annotations

import enum
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mechmoe.core.errors import InvalidInputError
from mechmoe.core.provenance import as_attrs, options_json
from mechmoe.core.writer import checksummed_zarr_encoding
from mechmoe.trajectory.root_state import STATE

if TYPE_CHECKING:
    import xarray as xr

#: The writer's kind for a trajectory store (and its netCDF export).
KIND = "trajectory"
#: Layout version, recorded in ``config.json`` (1: zarr v2 parts without checksums).
FORMAT = 2
CONFIG = "config.json"
MEASURES = "measures"
CHECKPOINTS = "checkpoints"
DUPLICATES = "duplicates"
FAILURES = "failures"
RECORD = "checkpoint.json"
#: Names at the top of a store that no variable of a measure may take (the root shares it).
RESERVED_NAMES = frozenset(
    {CONFIG, MEASURES, CHECKPOINTS, DUPLICATES, FAILURES, STATE, "zarr.json"}
)
#: Test hook: seconds to sleep after a part's data are written, before it is renamed into
#: place (lets a test SIGKILL the writer mid-write).
PAUSE_ENV = "MECHMOE_TEST_PAUSE_IN_WRITE"
#: Benchmark hook: ``1`` writes parts without checksums or manifests and keeps no root, to
#: measure what integrity and the plain-xarray root cost (benchmarks/bench_trajectory.py).
PLAIN_ENV = "MECHMOE_BENCH_PLAIN_STORE"

STEP_DIR = re.compile(r"^step_(\d{12})$")
STEP_FILE = re.compile(r"^step_(\d{12})\.json$")
MEASURE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")

Verify = Literal["full", "quick", "none"]


class Status(enum.StrEnum):
    """What became of a checkpoint in a sweep (and what :meth:`~mechmoe.trajectory.store.TrajectoryStore.write` returns).

    A :class:`str` enum: ``Status.DONE == "done"`` and it prints as ``done``.
    """

    #: measured (at least one measure stored) in this run
    DONE = "done"
    #: everything asked for was already in the store
    SKIPPED = "skipped"
    #: loading or a measure failed (recorded in ``failures/`` and retried next run)
    FAILED = "failed"
    #: weights identical to an earlier measured checkpoint's (recorded in ``duplicates/``)
    DUPLICATE = "duplicate"


def step_name(step: int) -> str:
    """``step_000000001000``: zero-padded, so names sort like steps."""
    return f"step_{step:012d}"


def is_plain() -> bool:
    """Whether :data:`PLAIN_ENV` asks for parts without integrity records and no root."""
    return os.environ.get(PLAIN_ENV, "") not in ("", "0")


def to_json(obj: Any) -> str:
    """``obj`` as a record file's text: sorted keys, one-space indent, a final newline."""
    return json.dumps(json.loads(options_json(obj)), sort_keys=True, indent=1) + "\n"


def normal(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` as it reads back from JSON (tuples become lists, keys sorted)."""
    return json.loads(options_json(obj))


def record_checksum(record: Mapping[str, Any]) -> str:
    """CRC-32C of a part's record (its ``checksum`` key left out), as 8 hex digits."""
    import google_crc32c

    body = json.dumps({k: v for k, v in record.items() if k != "checksum"}, sort_keys=True)
    return google_crc32c.Checksum(body.encode()).hexdigest().decode()


def try_json(path: Path) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, problem)`` for a missing or unreadable file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    try:
        return json.loads(text), None
    except ValueError:
        return None, "not valid JSON (cut short or overwritten)"


def json_diff(old: Any, new: Any, where: str) -> tuple[str, Any, Any] | None:
    """The first field (dotted path) where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = json_diff(old.get(key), new.get(key), f"{where}.{key}" if where else key)
            if found is not None:
                return found
        return None
    return None if old == new else (where, old, new)


def check_names(ds: xr.Dataset) -> None:
    """Refuse a measure's Dataset with a variable named like the store's own files."""
    clash = sorted(str(v) for v in ds.variables if str(v) in RESERVED_NAMES)
    if clash:
        raise InvalidInputError(
            f"a measure's variable is named {clash[0]!r}, a name the trajectory store "
            "keeps for itself; rename the variable"
        )


def for_zarr(ds: xr.Dataset) -> xr.Dataset:
    """Object-dtype strings as fixed-width unicode (zarr stores those natively)."""
    ds = ds.copy()
    for name in list(ds.variables):
        var = ds[name]
        if var.dtype == object:
            ds[name] = var.astype(str)
    ds.attrs = as_attrs(ds.attrs)
    return ds


def write_zarr(ds: xr.Dataset, path: Path, *, plain: bool = False) -> None:
    """One measure's Dataset as zarr v3: one chunk per variable, checksummed, every chunk written."""
    ds = for_zarr(ds)
    enc = checksummed_zarr_encoding(ds)
    if plain:
        from zarr.codecs import ZstdCodec

        enc = {name: {"compressors": (ZstdCodec(level=0),)} for name in enc}
    for name, var in ds.variables.items():
        enc[str(name)]["chunks"] = tuple(max(1, n) for n in var.shape)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # zarr's note that fixed-width unicode is not in the v3 spec
        ds.to_zarr(
            path,
            mode="w-",
            consolidated=False,
            zarr_format=3,
            encoding=enc,
            write_empty_chunks=True,
        )


__all__ = [
    "CHECKPOINTS",
    "CONFIG",
    "DUPLICATES",
    "FAILURES",
    "FORMAT",
    "KIND",
    "MEASURES",
    "MEASURE_NAME",
    "PAUSE_ENV",
    "PLAIN_ENV",
    "RECORD",
    "RESERVED_NAMES",
    "STEP_DIR",
    "STEP_FILE",
    "Status",
    "Verify",
    "check_names",
    "for_zarr",
    "is_plain",
    "json_diff",
    "normal",
    "record_checksum",
    "step_name",
    "to_json",
    "try_json",
    "write_zarr",
]
