"""Where mechmoe keeps what it can rebuild: trained zoo models, sweeps, compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path


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


__all__ = ["cache_root"]
