"""zarr v3 arrays read and written straight from their files, for the store's root.

The root (:mod:`mechmoe.trajectory.root`) is kept up to date without opening zarr arrays
where it can: metadata are read and edited as JSON (:func:`read_meta`, :func:`write_json`),
a part's one chunk becomes the root's chunk at a step by a hard link (:func:`link_chunk`),
and the small ``step`` coords are encoded here byte for byte as zarr encodes them
(:func:`write_in_place`). Also the checks of a root's files and the removal of folders.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mechmoe.core.writer import remove_tree


def read_meta(path: Path) -> dict[str, Any]:
    """The ``zarr.json`` of the zarr v3 node at ``path``."""
    return json.loads((path / "zarr.json").read_text(encoding="utf-8"))


def dtype_text(meta: Mapping[str, Any]) -> str:
    """An array's ``data_type`` as comparable text."""
    return json.dumps(meta.get("data_type"), sort_keys=True)


def describe(source: Path, files: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A measure's part: its attrs; every array's dims, shape, dtype, attrs and role.

    Coordinates also get a signature of their values (sizes and checksums of their chunk
    files, from ``files`` when the part's record lists them), so a part whose
    coordinates differ from the root's is noticed.
    """
    from mechmoe.core.writer import file_checksum

    def checksum(rel: str, p: Path) -> tuple[int, str]:
        entry = (files or {}).get(rel)
        if entry is not None:
            return int(entry[0]), str(entry[1])
        return p.stat().st_size, file_checksum(p)

    group = read_meta(source)
    arrays: dict[str, dict[str, Any]] = {}
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        meta = read_meta(Path(entry.path))
        arrays[entry.name] = {
            "dims": list(meta.get("dimension_names") or []),
            "shape": list(meta["shape"]),
            "dtype": dtype_text(meta),
            "attrs": dict(meta.get("attributes") or {}),
        }
    listed: set[str] = set()
    for info in arrays.values():
        listed |= set(str(info["attrs"].get("coordinates", "")).split())
    for name, info in arrays.items():
        info["data"] = name not in listed and info["dims"] != [name]
        if not info["data"]:
            folder = source / name
            info["sig"] = json.dumps(
                [
                    info["dims"],
                    info["shape"],
                    info["dtype"],
                    sorted(
                        (
                            p.relative_to(folder).as_posix(),
                            *checksum(p.relative_to(source).as_posix(), p),
                        )
                        for p in folder.rglob("*")
                        if p.is_file() and p.name != "zarr.json"
                    ),
                ]
            )
    return {"attrs": dict(group.get("attributes") or {}), "arrays": arrays}


def promotes(dtype_text: str) -> bool:
    """Whether a variable of this (part) dtype changes dtype when a step lacks it (int → float)."""
    import numpy as np

    value = json.loads(dtype_text)
    if not isinstance(value, str):
        return True  # strings and other structured types: NaN makes them objects
    try:
        return np.dtype(value).kind not in "fc"
    except TypeError:
        return True


def clear_cut_short(target: Path) -> None:
    """Remove an array folder a killed write left without its metadata (zarr files only:
    ``zarr.json`` and chunks under ``c/``), so the rewrite can make it again."""
    if not target.is_dir() or target.is_symlink():
        return
    for f in target.rglob("*"):
        rel = f.relative_to(target).parts
        if f.is_file() and rel != ("zarr.json",) and rel[0] != "c":
            return  # not a folder of ours: left alone, and mkdir names it
    remove_tree(target)


def chunk_ok(path: Path) -> bool:
    """A chunk written with the crc32c codec: its last 4 bytes are the CRC-32C of the rest."""
    import google_crc32c

    data = path.read_bytes()
    return len(data) >= 4 and google_crc32c.value(data[:-4]) == int.from_bytes(data[-4:], "little")


def write_json(path: Path, value: Any, *, sort_keys: bool = False) -> None:
    """Write a small JSON file of the root in place, as zarr writes its metadata.

    Formatted as zarr formats it (indent 2), so a file edited here has the bytes zarr
    would have written. Not atomic, like zarr's own writes: the root is marked
    ``updating`` meanwhile, and an update cut short is redone from the parts.
    """
    path.write_text(json.dumps(value, indent=2, sort_keys=sort_keys), encoding="utf-8")


def link_chunk(src: Path, dst: Path, pos: int, dst_meta: Mapping[str, Any]) -> bool:
    """Make the part's one chunk the root's chunk at ``pos``; ``False`` if their encodings differ.

    With the same dtype and codecs, the chunk of shape ``(1, *shape)`` has the same bytes
    as the part's chunk of ``shape``: the file is hard-linked (copied where links fail),
    so the root takes no extra space.
    """
    src_meta = read_meta(src)
    shape = list(src_meta["shape"])
    chunks = src_meta["chunk_grid"]["configuration"]["chunk_shape"]
    same = (
        src_meta["data_type"] == dst_meta["data_type"]
        and src_meta["codecs"] == dst_meta["codecs"]
        and src_meta.get("chunk_key_encoding") == dst_meta.get("chunk_key_encoding")
        and dst_meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, *chunks]
        and all(c >= max(1, n) for c, n in zip(chunks, shape, strict=True))
    )
    sep = (dst_meta.get("chunk_key_encoding") or {}).get("configuration", {}).get("separator")
    if not same or sep != "/":
        return False
    key = "/".join(["c", *("0" for _ in shape)])
    target = dst.joinpath("c", str(pos), *("0" for _ in shape))
    if not (src / key).is_file():
        return False
    if os.path.lexists(target):
        remove_tree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    link(src / key, target)
    return True


def link(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (copied where links fail)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


#: Chunk length of the ``step`` coords (fixed, so a store's bytes do not depend on history).
STEP_CHUNK = 4096


def write_in_place(
    path: Path, values: Mapping[str, Any], members: dict[str, Any] | None = None
) -> bool:
    """Write the step coords into their arrays if they have the right dtype; else ``False``.

    Each is one chunk of :data:`STEP_CHUNK` values, encoded here as zarr encodes it
    (little-endian bytes padded with the fill value, zstd level 0, CRC-32C appended):
    the same bytes, without opening zarr arrays (tests/trajectory/test_root.py compares).
    """
    import numpy as np

    metas = {}
    for name, data in values.items():
        try:
            meta = members[name] if members is not None else read_meta(path / name)
        except (OSError, ValueError, KeyError):
            return False
        if (
            meta.get("data_type") != data_type(data.dtype)
            or meta["chunk_grid"]["configuration"]["chunk_shape"] != [STEP_CHUNK]
            or [c.get("name") for c in meta.get("codecs", [])] != ["bytes", "zstd", "crc32c"]
            or len(data) > STEP_CHUNK
        ):
            return False  # e.g. a longer revision name: the array is made again
        metas[name] = meta
    for name, meta in metas.items():
        data = np.asarray(values[name])
        fill = "" if data.dtype.kind == "U" else float(meta["fill_value"])
        chunk = np.full(STEP_CHUNK, fill, dtype=data.dtype)
        chunk[: len(data)] = data
        (path / name / "c").mkdir(exist_ok=True)
        (path / name / "c" / "0").write_bytes(encode_chunk(chunk, meta))
        if meta["shape"] != [len(data)]:
            meta["shape"] = [len(data)]
            write_json(path / name / "zarr.json", meta)
    return True


def data_type(dtype: Any) -> Any:
    """The zarr v3 ``data_type`` of a numpy dtype (fixed-width unicode included)."""
    if dtype.kind == "U":
        return {"name": "fixed_length_utf32", "configuration": {"length_bytes": dtype.itemsize}}
    return str(dtype)


def encode_chunk(chunk: Any, meta: Mapping[str, Any]) -> bytes:
    """One chunk through the codecs ``bytes`` (little endian), ``zstd``, ``crc32c``."""
    import google_crc32c
    from numcodecs import Zstd

    (zstd,) = [c for c in meta["codecs"] if c["name"] == "zstd"]
    conf = zstd.get("configuration", {})
    raw = chunk.astype(chunk.dtype.newbyteorder("<"), copy=False).tobytes()
    packed = Zstd(level=conf.get("level", 0), checksum=conf.get("checksum", False)).encode(raw)
    return bytes(packed) + google_crc32c.value(bytes(packed)).to_bytes(4, "little")


__all__ = [
    "STEP_CHUNK",
    "chunk_ok",
    "clear_cut_short",
    "data_type",
    "describe",
    "dtype_text",
    "encode_chunk",
    "link",
    "link_chunk",
    "promotes",
    "read_meta",
    "write_in_place",
    "write_json",
]
