"""What commands read: probe sets and prompt files, with the loader's notes on stderr.

The readers themselves are :func:`mechmoe.probes.load_probe` and
:func:`mechmoe.probes.read_prompts`; here what they changed while reading (duplicate
pairs collapsed, subjects merged into multi-object items) is printed as one ``note:``
line per relation instead of a Python warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mechmoe.cli._common import err_console
from mechmoe.probes import ProbeSet, PromptFile, load_probe, read_prompts


@contextmanager
def _notes_not_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the same facts are in meta.notes
        yield


def _print_notes(probe: ProbeSet) -> None:
    for meta in probe.relations:
        for note in meta.notes:
            err_console.print(f"note: {meta.name}: {note}", highlight=False, soft_wrap=True)


def load_probe_noting(spec: str, *, template: int = 0, limit: int | None = None) -> ProbeSet:
    """``load_probe(spec)`` (the first ``limit`` items of each relation), notes on stderr."""
    with _notes_not_warnings():
        probe = load_probe(spec, template=template)
    _print_notes(probe)
    return probe if limit is None else probe.head(limit, per_relation=True)


def read_prompts_noting(path: Path, *, template: int = 0, limit: int | None = None) -> PromptFile:
    """``read_prompts(path)`` (the first ``limit`` prompts), a relation's notes on stderr."""
    with _notes_not_warnings():
        prompts = read_prompts(path, template=template)
    if prompts.probe is not None:
        _print_notes(prompts.probe)
    return prompts if limit is None else prompts.head(limit)


__all__ = ["load_probe_noting", "read_prompts_noting"]
