"""Prompt files: the one reader behind every ``--prompts FILE`` and :func:`read_prompts`.

Two formats, told apart by the file's suffix (in any case: ``rel.JSON`` is a relation):

- **A relation** (``.json``): one LRE relation file (docs/probes.md); each item is a
  prompt, its gold objects the item's objects (a subject listed with several objects is
  one prompt whose gold answer is the set).
- **Text** (any other name): UTF-8, one prompt a line, or ``prompt<TAB>object`` on every
  line (the object is the gold answer ``--target gold`` explains). Lines end at ``\\n``
  (or ``\\r\\n``) and nowhere else: a form feed, U+2028 or U+0085 inside a line is part
  of its prompt. A byte-order mark is skipped and blank lines at the end are ignored.
  A blank line inside the file, a TAB with nothing after it, a second TAB, or a file that
  gives objects on some lines only is refused naming the line.

A file must be at most :data:`MAX_BYTES` long (a prompt file holds prompts, not a corpus;
this also stops an endless input such as ``/dev/zero`` at once); it may be a pipe
(``--prompts <(head -5 prompts.txt)``).

Examples
--------
>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "gold.txt"
>>> _ = path.write_text("The capital of France is\\tParis\\nThe opposite of hot is\\tcold\\n")
>>> pf = read_prompts(path)
>>> pf.prompts
('The capital of France is', 'The opposite of hot is')
>>> pf.objects
(('Paris',), ('cold',))
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from mechmoe.core.errors import InvalidInputError
from mechmoe.probes.lre import read_lre
from mechmoe.probes.probeset import ProbeSet

#: Largest prompt file read, in bytes (64 MiB: about a million prompts).
MAX_BYTES = 64 * 2**20
#: Suffix of a relation file (compared without case).
RELATION_SUFFIX = ".json"


@dataclass(frozen=True)
class PromptFile:
    """Prompts read from a file, with their gold objects where the file gives them.

    Attributes
    ----------
    path
        The file read.
    prompts
        The prompts, in file order.
    objects
        One tuple of gold objects per prompt, or ``None`` for a text file without
        objects.
    probe
        For a relation file, the :class:`~mechmoe.probes.ProbeSet` the prompts come
        from (its ``relations`` carry the loader's notes); ``None`` for a text file.
    """

    path: Path
    prompts: tuple[str, ...]
    objects: tuple[tuple[str, ...], ...] | None = None
    probe: ProbeSet | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def is_relation(self) -> bool:
        return self.probe is not None

    def head(self, n: int) -> PromptFile:
        """The first ``n`` prompts (and their objects)."""
        return replace(
            self,
            prompts=self.prompts[:n],
            objects=None if self.objects is None else self.objects[:n],
            probe=None if self.probe is None else self.probe.head(n),
        )


def is_relation_file(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`read_prompts` reads ``path`` as an LRE relation (its suffix, any case)."""
    return Path(path).suffix.lower() == RELATION_SUFFIX


def read_prompts(path: str | os.PathLike[str], *, template: int | str = 0) -> PromptFile:
    """Read a prompt file: text (one prompt a line, or ``prompt<TAB>object``) or a relation.

    Parameters
    ----------
    path
        The file; see the module's description for the two formats.
    template
        For a relation file, which of its prompt templates builds the prompts (an index
        from 0, or a template string with one ``{}``).

    Raises
    ------
    InvalidInputError
        A missing file, a folder, a file over :data:`MAX_BYTES`, text that is not UTF-8
        or holds NUL bytes, no prompts, or a malformed line (named by number); a
        relation file's own errors (docs/probes.md).
    """
    path = Path(path)
    name = repr(str(path))
    if path.is_dir():
        raise InvalidInputError(
            f"prompt file {name} is a folder; give one file (a folder of relations goes "
            "to --probe / --relations)"
        )
    if not path.exists():
        raise InvalidInputError(f"prompt file {name} does not exist")
    if is_relation_file(path):
        _check_size(path, name)
        probe = read_lre(path, template=template)
        if len(probe) == 0:
            raise InvalidInputError(f"relation file {name} has no samples")
        return PromptFile(path, probe.prompts, probe.object_sets, probe)
    return _read_text(path, name)


def _check_size(path: Path, name: str) -> None:
    try:
        info = path.stat()
    except OSError as err:
        raise InvalidInputError(f"prompt file {name} cannot be read ({err.strerror})") from None
    if stat.S_ISREG(info.st_mode) and info.st_size > MAX_BYTES:
        raise _too_large(name)


def _too_large(name: str) -> InvalidInputError:
    return InvalidInputError(
        f"prompt file {name} is larger than {MAX_BYTES // 2**20} MiB (or never ends); "
        "a prompt file holds one prompt a line"
    )


def _read_bytes(path: Path, name: str) -> bytes:
    _check_size(path, name)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)  # bounded: /dev/zero and friends never end
    except OSError as err:
        raise InvalidInputError(f"prompt file {name} cannot be read ({err.strerror})") from None
    if len(data) > MAX_BYTES:
        raise _too_large(name)
    return data


def _read_text(path: Path, name: str) -> PromptFile:
    data = _read_bytes(path, name)
    if b"\x00" in data:
        raise InvalidInputError(f"prompt file {name} holds NUL bytes; is it a binary file?")
    try:
        # utf-8-sig: a byte-order mark some editors write is not part of the first prompt
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError(f"prompt file {name} is not UTF-8 text") from None
    # Lines end at \n (or \r\n) only: str.splitlines would also split at form feeds,
    # U+2028, U+0085 and other characters that can sit inside a prompt.
    lines = [ln.removesuffix("\r") for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InvalidInputError(f"prompt file {name} has no prompts (one prompt a line)")
    prompts: list[str] = []
    objects: list[str | None] = []
    for i, line in enumerate(lines, start=1):
        where = f"line {i} of {name}"
        prompt, tab, obj = line.partition("\t")
        if not prompt.strip():
            raise InvalidInputError(f"{where} is an empty prompt")
        if "\t" in obj:
            raise InvalidInputError(
                f"{where} has more than one TAB; write prompt<TAB>object with one TAB"
            )
        if tab and not obj.strip():
            raise InvalidInputError(f"{where} has a TAB but no object after it")
        prompts.append(prompt)
        objects.append(obj.strip() if tab else None)
    with_obj = [i for i, o in enumerate(objects, start=1) if o is not None]
    if not with_obj:
        return PromptFile(path, tuple(prompts))
    if len(with_obj) < len(objects):
        missing = next(i for i, o in enumerate(objects, start=1) if o is None)
        raise InvalidInputError(
            f"line {missing} of {name} has no gold object, but line {with_obj[0]} has "
            "one; write prompt<TAB>object on every line, or no objects at all"
        )
    return PromptFile(path, tuple(prompts), tuple((o,) for o in objects if o is not None))


__all__ = ["MAX_BYTES", "PromptFile", "is_relation_file", "read_prompts"]
