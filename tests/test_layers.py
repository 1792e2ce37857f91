"""The package's layering holds: import-linter's contracts in pyproject.toml, and no cycle.

A module that imports a layer above its own (even lazily, inside a function), production
code that imports the test fixtures, a backend library imported outside its backend
module, or torch imported by the command line or the statistics themselves fails this test, with import-linter's report of the offending import chain. Any
import cycle among the package's modules fails it too, wherever the imports sit: at the
top, inside a function, or under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def import_cycles(package: str = "mechmoe") -> list[list[str]]:
    """Groups of modules that import each other in a circle (strongly connected components).

    grimp (import-linter's graph builder) reads every import statement, those inside
    functions and under ``TYPE_CHECKING`` included.
    """
    import grimp

    graph = grimp.build_graph(package, exclude_type_checking_imports=False, cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    # Tarjan's algorithm, iterative so a deep chain cannot hit the recursion limit
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    out.append(sorted(group))
    return sorted(out)


def _cycles_of_copy(folder: Path) -> list[list[str]]:
    """:func:`import_cycles` of the ``mechmoe`` package found in ``folder``, in a fresh process."""
    script = (
        f"import json, sys; sys.path.insert(0, {str(folder)!r}); "
        f"sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from test_layers import import_cycles; print(json.dumps(import_cycles()))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def _copy_package(tmp_path: Path) -> Path:
    pkg = tmp_path / "mechmoe"
    shutil.copytree(ROOT / "mechmoe", pkg, ignore=shutil.ignore_patterns("__pycache__", "data"))
    return pkg


def _lint_copy(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """import-linter run on the copy made by :func:`_copy_package`, with the contracts."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return subprocess.run(
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
    pkg = _copy_package(tmp_path)
    # core (the bottom layer) reaching up into the operations, inside a function
    with open(pkg / "core" / "progress.py", "a") as fh:
        fh.write("\n\ndef _upward():\n    from mechmoe.ops import attribution  # noqa: F401\n")
    run = _lint_copy(tmp_path)
    assert run.returncode != 0
    assert "mechmoe.core is not allowed to import mechmoe.ops" in run.stdout


def test_torch_contract_catches_a_direct_import_in_the_cli(tmp_path):
    """The torch contract is live: a command module that imports torch itself breaks it."""
    pytest.importorskip("importlinter")
    pkg = _copy_package(tmp_path)
    with open(pkg / "cli" / "report.py", "a") as fh:
        fh.write("\nimport torch  # noqa: E402,F401\n")
    run = _lint_copy(tmp_path)
    assert run.returncode != 0
    assert "mechmoe.cli is not allowed to import torch" in run.stdout, run.stdout[-3000:]
    assert "mechmoe.cli.report -> torch" in run.stdout


def test_no_import_cycle():
    pytest.importorskip("grimp", reason="grimp comes with import-linter, a dev dependency")
    assert import_cycles() == []


def test_cycle_check_sees_type_checking_imports(tmp_path):
    """The check is live: one import under ``TYPE_CHECKING`` that closes a circle fails it."""
    pytest.importorskip("grimp")
    pkg = _copy_package(tmp_path)
    assert _cycles_of_copy(tmp_path) == []
    # probeset is imported by lre; a type-only import back closes the circle
    path = pkg / "probes" / "probeset.py"
    anchor = "from mechmoe.core.errors import InvalidInputError\n"
    text = path.read_text()
    assert anchor in text
    path.write_text(
        text.replace(
            anchor,
            anchor + "from typing import TYPE_CHECKING\n\n"
            "if TYPE_CHECKING:\n    from mechmoe.probes.lre import read_lre  # noqa: F401\n",
            1,
        )
    )
    assert _cycles_of_copy(tmp_path) == [["mechmoe.probes.lre", "mechmoe.probes.probeset"]]
