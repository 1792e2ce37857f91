"""The package's layering holds: import-linter's contracts in pyproject.toml.

A module that imports a layer above its own (even lazily, inside a function), production
code that imports the test fixtures, or a backend library imported outside its backend
module fails this test, with import-linter's report of the offending import chain.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    pytest.importorskip(
        "importlinter", reason="import-linter is a dev dependency (make test installs it)"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(no_cache=True, no_logo=True))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout


def test_layering_check_catches_an_upward_import(tmp_path):
    """The contract is live: a copy of the package with one upward import breaks it."""
    pytest.importorskip("importlinter")
    import shutil

    pkg = tmp_path / "mechmoe"
    shutil.copytree(ROOT / "mechmoe", pkg, ignore=shutil.ignore_patterns("__pycache__", "data"))
    # core (the bottom layer) reaching up into the operations, inside a function
    with open(pkg / "core" / "progress.py", "a") as fh:
        fh.write("\n\ndef _upward():\n    from mechmoe.ops import attribution  # noqa: F401\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, '.'); "
            "from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(no_cache=True, no_logo=True))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    assert "mechmoe.core is not allowed to import mechmoe.ops" in run.stdout
