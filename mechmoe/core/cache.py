"""Where mechmoe keeps what it can rebuild: trained zoo models, sweeps, compiled kernels,
converted models; and the two habits every cache entry follows.

- An entry is verified before use: :func:`file_digest` (a content hash recorded when the
  entry was built) against the bytes on disk now. A truncated, overwritten or garbage
  entry is never used: it is rebuilt, and :func:`note_rebuild` says so in one line.
- An entry appears whole or not at all: it is built under a temporary name beside its
  place and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

#: The logger of cache notes (one line each on stderr unless the caller configures logging).
log = logging.getLogger("mechmoe.cache")


def cache_root() -> Path:
    """Where mechmoe caches trained models, sweeps and compiled kernels.

    ``$MECHMOE_CACHE`` if set, else the user cache directory (``$XDG_CACHE_HOME/mechmoe``,
    by default ``~/.cache/mechmoe`` on Linux).
    """
    env = os.environ.get("MECHMOE_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mechmoe", appauthor=False))


def file_digest(path: str | os.PathLike[str], *, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's content, hex (read in chunks; never maps the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def note_rebuild(what: str, path: str | os.PathLike[str], why: str) -> None:
    """Say, in one line, that a damaged cache entry is being rebuilt."""
    log.warning("mechmoe: the cached %s %s is damaged (%s); rebuilding it", what, path, why)


__all__ = ["cache_root", "file_digest", "log", "note_rebuild"]
