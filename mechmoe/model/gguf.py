"""GGUF files converted once into a verified local model folder, loaded from there after.

transformers reads a ``.gguf`` file by parsing it in Python, once for the config, once for
the tokenizer and twice for the weights (its metadata, then the tensors, dequantised to
float32): about 25 s for SmolLM2-135M's 49k-token vocabulary on a 2-core machine, paid by
every call. :func:`lookup` and :func:`store` keep what the first load produced instead, as
a plain model folder (``model.safetensors`` in float32, ``config.json``, the tokenizer's
files) under the cache (:func:`mechmoe.core.cache.cache_root`, ``models/``), which
transformers reads in a fraction of that.

- **Keyed by content.** The folder's name carries the SHA-256 of the GGUF file's bytes
  and the versions of the code that converted it (transformers, gguf, this format), so an
  edited, replaced or re-downloaded file, or a new transformers, makes a new entry.
- **Verified before use.** ``manifest.json`` records each file's size and SHA-256 when the
  entry is built; :func:`lookup` checks every one before the folder is used. A damaged
  entry (a truncated or overwritten file, a file gone) is removed and rebuilt from the
  GGUF, with one line saying so (:func:`mechmoe.core.cache.note_rebuild`).
- **Whole or absent.** The folder is written to a temporary sibling and renamed into
  place by mechmoe's writer (:mod:`mechmoe.core.writer`): an interrupted conversion
  leaves no entry.
- **The same model.** The folder holds the float32 weights transformers produced from the
  GGUF, so loading it gives bit-identical weights and logits (tested on SmolLM2 and on a
  GGUF written by the tests). Only a float32 load with the file's own tokenizer is kept:
  other dtypes are cast from the folder's float32 weights exactly as from the GGUF's.

``MECHMOE_GGUF_CACHE=0`` turns the cache off (every load parses the GGUF, as before).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from mechmoe.core.cache import cache_root, file_digest, log, note_rebuild

#: Kind of mechmoe output a converted folder is (its writer mark).
KIND = "converted-model"
#: Version of the folder's layout; a change makes new entries.
FORMAT = 1
MANIFEST = "manifest.json"


def enabled() -> bool:
    """Whether converted GGUF folders are used (``MECHMOE_GGUF_CACHE`` is not ``0``)."""
    value = os.environ.get("MECHMOE_GGUF_CACHE", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def _versions() -> str:
    out = [f"format={FORMAT}"]
    for dist in ("transformers", "gguf"):
        try:
            out.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist}=none")
    return ",".join(out)


def entry_for(gguf: str | os.PathLike[str]) -> Path:
    """The cache folder for ``gguf`` (whether or not it exists yet).

    Its name is the file's stem, then 16 hex digits of the SHA-256 of its content, then 8 of
    the converting code's versions.
    """
    import hashlib

    path = Path(gguf)
    content = file_digest(path)[:16]
    code = hashlib.sha256(_versions().encode()).hexdigest()[:8]
    return cache_root() / "models" / f"{path.stem}-{content}-{code}"


def _manifest_of(folder: Path, source: Path) -> dict[str, Any]:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST
    }
    return {"format": FORMAT, "source": source.name, "versions": _versions(), "files": files}


def _problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be used, or ``None`` when every file matches its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict) or not files:
            return "its manifest is not one this version wrote"
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is missing or unreadable"
    for name, want in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
            if size != want["size"]:
                return f"{name} has {size:,} bytes, {want['size']:,} expected"
            if file_digest(path) != want["sha256"]:
                return f"{name} does not match its recorded hash"
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, KeyError, TypeError) as exc:
            return f"{name} cannot be checked ({exc})"
    return None


def lookup(gguf: str | os.PathLike[str]) -> Path | None:
    """The verified converted folder of ``gguf``, or ``None`` (absent, damaged or disabled).

    A damaged entry is removed (one line says so), so the caller's next :func:`store`
    rebuilds it.
    """
    if not enabled():
        return None
    try:
        folder = entry_for(gguf)
    except OSError:  # unreadable: the GGUF loader says why
        return None
    if not folder.is_dir():
        return None
    why = _problem(folder)
    if why is None:
        return folder
    note_rebuild(f"conversion of {Path(gguf).name}", folder, why)
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _save(hf: Any, tokenizer: Any, folder: Path) -> None:
    """Write ``hf`` and ``tokenizer`` as a plain model folder.

    transformers refuses ``save_pretrained`` on a model loaded from a GGUF file (it is
    marked quantised, though its weights are already dequantised float32), so the parts are
    written one by one: the config (with the model's class as its architecture, which a
    GGUF config lacks), the generation config, every weight once (tied weights are one
    tensor; the config's ``tie_word_embeddings`` ties them again on load) and the tokenizer.
    """
    import copy

    from safetensors.torch import save_model

    config = copy.deepcopy(hf.config)
    config.architectures = [type(hf).__name__]
    config.save_pretrained(folder)
    generation = getattr(hf, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    save_model(hf, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)


def store(gguf: str | os.PathLike[str], hf: Any, tokenizer: Any) -> Path | None:
    """Keep ``hf`` (float32, as loaded from ``gguf``) and its tokenizer as ``gguf``'s entry.

    Returns the folder, or ``None`` when the cache is disabled, the model is not float32
    or nothing could be written (a full disk or a read-only cache only costs the speed-up,
    said in one line; the loaded model is unaffected).
    """
    import torch

    from mechmoe.core.writer import prepare_output

    if not enabled() or any(p.dtype != torch.float32 for p in hf.parameters()):
        return None
    source = Path(gguf)
    folder = entry_for(source)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():  # an entry another process finished meanwhile, or a damaged one
            if _problem(folder) is None:
                return folder
            shutil.rmtree(folder)
        out = prepare_output(folder, kind=KIND, overwrite=True, folder=True)
        with out.writing() as tmp:
            _save(hf, tokenizer, tmp)
            manifest = _manifest_of(tmp, source)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    except Exception as exc:  # noqa: BLE001 - caching is an optimisation: never fail a load
        log.warning(
            "mechmoe: could not cache the conversion of %s (%s); the next load parses it again",
            source.name,
            exc,
        )
        with contextlib.suppress(OSError):
            if folder.exists() and _problem(folder) is not None:
                shutil.rmtree(folder)
        return None
    return folder


__all__ = ["FORMAT", "KIND", "MANIFEST", "enabled", "entry_for", "lookup", "store"]
