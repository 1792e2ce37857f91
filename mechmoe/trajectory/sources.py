"""Checkpoint sources: where a model's training checkpoints come from.

A source lists :class:`Checkpoint` records (step, tokens seen, hub revision or local
folder, label) and loads one as a :class:`mechmoe.Model`. Two sources ship:

- :class:`HubRevisions`: the branches of a hub repo named ``step{N}-tokens{M}B`` (how
  OLMo and OLMoE publish their intermediate checkpoints);
- :class:`LocalCheckpoints`: a folder of HF checkpoints named ``step_000100/``,
  ``step100/``, ``step-100/``, ``checkpoint-100/`` or ``step100-tokens4B/``, or a manifest
  file (JSON or CSV with ``step``, ``path`` and optional ``tokens``/``label`` columns).

Both take a selection written in one small grammar (:func:`parse_selection`), e.g.
``"all"``, ``"5000,10000"``, ``"every:5000"``, ``"log:15"``, ``"range:1000-50000+log:10"``.
A new source needs only ``describe()``, ``checkpoints()`` and ``load()`` (see
:class:`CheckpointSource`).

Examples
--------
>>> ckpts = [Checkpoint(step=s, tokens=None, label=f"step{s}") for s in (0, 10, 100, 1000, 5000)]
>>> [c.step for c in parse_selection("range:10-5000+log:3").apply(ckpts)]
[10, 100, 5000]
>>> parse_step_name("step5000-tokens20.5B")
(5000, 20500000000.0)
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mechmoe.core.errors import InvalidInputError, ModelNotFoundError
from mechmoe.model.hub import list_hub_branches
from mechmoe.model.options import LoadOptions

if TYPE_CHECKING:
    from mechmoe.model import Model

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_TOKENS = r"(?:-tokens(?P<tokens>\d+(?:\.\d+)?)(?P<unit>[KMBT]))?"
#: Hub branch names: ``step5000`` or ``step5000-tokens20B`` (OLMo / OLMoE convention).
HUB_PATTERN = re.compile(r"^step(?P<step>\d+)" + _TOKENS + r"$")
#: Local folder names: ``step_000100``, ``step100``, ``step-100``, ``checkpoint-100``,
#: ``checkpoint_100``, each optionally followed by ``-tokens{M}{K|M|B|T}``.
LOCAL_PATTERN = re.compile(r"^(?:step|checkpoint)[-_]?(?P<step>\d+)" + _TOKENS + r"$")


@dataclass(frozen=True)
class Checkpoint:
    """One training checkpoint.

    ``tokens`` is the number of training tokens seen (``20e9`` for ``tokens20B``), or
    ``None`` when unknown. A hub checkpoint has ``repo`` and ``revision``; a local one has
    ``path``. ``label`` names it in messages (the branch or folder name).
    """

    step: int
    tokens: float | None = None
    revision: str | None = None
    path: str | None = None
    repo: str | None = None
    label: str = ""

    def load(self, options: LoadOptions | None = None) -> Model:
        """Load this checkpoint with :func:`mechmoe.model.load` and ``options``.

        The checkpoint decides the revision: ``options.revision`` must be unset (or the
        checkpoint's own). ``options.tokenizer`` is for checkpoints saved without one.
        """
        from mechmoe.model import load

        opts = options if options is not None else LoadOptions()
        if opts.revision is not None and opts.revision != self.revision:
            raise InvalidInputError(
                f"checkpoint {self.label!r} is its own revision; drop revision="
                f"{opts.revision!r} from the load options (select checkpoints with the "
                "source's selection instead)"
            )
        if self.path is not None:
            return load(self.path, opts.replace(revision=None))
        if self.repo is None:
            raise InvalidInputError(f"checkpoint {self.label!r} has neither a path nor a repo")
        return load(self.repo, opts.replace(revision=self.revision))


@runtime_checkable
class CheckpointSource(Protocol):
    """What the sweep needs from a source of checkpoints.

    ``describe()`` returns the JSON-able identity recorded in the store's config (a store
    refuses to be extended from a different source); ``checkpoints()`` lists the selected
    checkpoints sorted by step; ``load()`` builds the model of one of them with the run's
    :class:`~mechmoe.model.options.LoadOptions`.
    """

    def describe(self) -> dict[str, Any]: ...

    def checkpoints(self) -> list[Checkpoint]: ...

    def load(self, checkpoint: Checkpoint, options: LoadOptions | None = None) -> Model: ...


class _LoadsByCheckpoint:
    """The usual ``load``: a checkpoint that carries its path or repo loads itself.

    A source with special loading (a remote store, renamed weights) overrides this; the
    sweep always loads through the source.
    """

    def load(self, checkpoint: Checkpoint, options: LoadOptions | None = None) -> Model:
        return checkpoint.load(options)


# ---- names -------------------------------------------------------------------------


def _tokens(value: str | None, unit: str | None) -> float | None:
    if value is None:
        return None
    # Decimal keeps "4.19B" exact (4190000000.0), where 4.19 * 1e9 would not be.
    return float(Decimal(value) * _UNITS[unit or ""])


def parse_step_name(
    name: str, pattern: re.Pattern[str] = HUB_PATTERN
) -> tuple[int, float | None] | None:
    """``(step, tokens)`` of a checkpoint name, or ``None`` if the name does not match.

    Examples
    --------
    >>> parse_step_name("step1000-tokens4B")
    (1000, 4000000000.0)
    >>> parse_step_name("step0") == (0, None), parse_step_name("main")
    (True, None)
    >>> parse_step_name("checkpoint-300", LOCAL_PATTERN)
    (300, None)
    """
    m = pattern.match(name)
    if m is None:
        return None
    return int(m.group("step")), _tokens(m.groupdict().get("tokens"), m.groupdict().get("unit"))


def _check_unique(ckpts: Sequence[Checkpoint], where: str) -> list[Checkpoint]:
    by_step: dict[int, Checkpoint] = {}
    for c in ckpts:
        if c.step in by_step:
            raise InvalidInputError(
                f"{where}: {by_step[c.step].label!r} and {c.label!r} are both step {c.step}; "
                "keep one of them (or list the checkpoints in a manifest)"
            )
        by_step[c.step] = c
    return sorted(by_step.values(), key=_step)


# ---- selection ---------------------------------------------------------------------

SELECTION_HELP = (
    "all, a list of steps or names (5000,10000), every:N, log:N, range:A-B, first:N or "
    "last:N, chained with '+' (e.g. range:1000-50000+log:10)"
)


def _int(text: str, term: str, *, minimum: int = 0) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise InvalidInputError(
            f"selection term {term!r}: {text!r} is not an integer >= {minimum}; use {SELECTION_HELP}"
        )
    return value


def _log_pick(ckpts: list[Checkpoint], n: int) -> list[Checkpoint]:
    if n >= len(ckpts):
        return ckpts
    # Positions in log space; step 0 sits with step 1 (log 0), the endpoints are always kept.
    logs = [math.log(max(c.step, 1)) for c in ckpts]
    lo, hi = logs[0], logs[-1]
    targets = [lo + (hi - lo) * i / (n - 1) for i in range(n)] if n > 1 else [hi]
    chosen: set[int] = set()
    for t in targets:
        free = [i for i in range(len(ckpts)) if i not in chosen]
        chosen.add(min(free, key=lambda i: (abs(logs[i] - t), ckpts[i].step)))
    return [ckpts[i] for i in sorted(chosen)]


@dataclass(frozen=True)
class Selection:
    """A parsed checkpoint selection: terms applied left to right, each to what the last kept.

    Build it with :func:`parse_selection`.
    """

    spec: str
    terms: tuple[tuple[str, Any], ...]

    def apply(self, ckpts: Sequence[Checkpoint]) -> list[Checkpoint]:
        """The selected checkpoints, sorted by step; an empty result is an error."""
        kept = sorted(ckpts, key=_step)
        for kind, arg in self.terms:
            if kind == "all":
                continue
            if kind == "every":
                kept = [c for c in kept if c.step % arg == 0]
            elif kind == "range":
                lo, hi = arg
                kept = [
                    c for c in kept if (lo is None or c.step >= lo) and (hi is None or c.step <= hi)
                ]
            elif kind == "first":
                kept = kept[:arg]
            elif kind == "last":
                kept = kept[-arg:]
            elif kind == "log":
                kept = _log_pick(kept, arg)
            elif kind == "list":
                kept = self._pick(kept, arg)
        if not kept:
            steps = sorted(c.step for c in ckpts)
            span = f"steps {steps[0]}…{steps[-1]}" if steps else "none"
            raise InvalidInputError(
                f"selection {self.spec!r} matches none of the {len(steps)} checkpoints ({span}); "
                "widen it"
            )
        return kept

    def _pick(self, kept: list[Checkpoint], wanted: tuple[str, ...]) -> list[Checkpoint]:
        by_step = {str(c.step): c for c in kept}
        by_name = {n: c for c in kept for n in (c.label, c.revision) if n}
        out: dict[int, Checkpoint] = {}
        for item in wanted:
            c = by_name.get(item) or by_step.get(item.replace("_", "").lstrip("0") or "0")
            if c is None:
                near = sorted(by_step, key=lambda s: abs(int(s) - _as_int(item)))[:3]
                hint = f"; nearest steps: {', '.join(near)}" if near else ""
                raise InvalidInputError(
                    f"selection {self.spec!r}: no checkpoint {item!r} among the "
                    f"{len(kept)} available{hint}"
                )
            out[c.step] = c
        return sorted(out.values(), key=_step)


def _step(c: Checkpoint) -> int:
    return c.step


def _as_int(text: str) -> int:
    digits = re.sub(r"\D", "", text)
    return int(digits) if digits else 0


def parse_selection(spec: str | None) -> Selection:
    """Parse a selection such as ``"range:1000-50000+log:10"``.

    Terms, joined by ``+`` and applied left to right (each filters what the previous kept):

    - ``all``: everything (the default);
    - ``5000,10000`` or ``step5000-tokens20B,step10000-tokens41B``: these steps / names
      (an unknown one is an error naming the nearest steps);
    - ``every:N``: steps that are multiples of N;
    - ``log:N``: N checkpoints evenly spaced in log(step), first and last included;
    - ``range:A-B``: A ≤ step ≤ B; ``range:A-`` and ``range:-B`` leave one end open;
    - ``first:N`` / ``last:N``: the N earliest / latest.

    Examples
    --------
    >>> parse_selection("every:5000+last:3").terms
    (('every', 5000), ('last', 3))
    >>> parse_selection("range:-100").terms
    (('range', (None, 100)),)
    """
    spec = (spec or "all").strip() or "all"
    terms: list[tuple[str, Any]] = []
    for raw in spec.split("+"):
        term = raw.strip()
        kind, sep, arg = term.partition(":")
        kind = kind.strip().lower()
        if not term:
            raise InvalidInputError(f"selection {spec!r} has an empty term; use {SELECTION_HELP}")
        if term.lower() == "all":
            terms.append(("all", None))
        elif sep and kind in ("every", "log", "first", "last"):
            terms.append((kind, _int(arg.strip(), term, minimum=1)))
        elif sep and kind == "range":
            lo_s, dash, hi_s = arg.strip().partition("-")
            if not dash or not (lo_s.strip() or hi_s.strip()):
                raise InvalidInputError(
                    f"selection term {term!r}: write range:A-B, range:A- or range:-B"
                )
            lo = _int(lo_s.strip(), term) if lo_s.strip() else None
            hi = _int(hi_s.strip(), term) if hi_s.strip() else None
            if lo is not None and hi is not None and lo > hi:
                raise InvalidInputError(
                    f"selection term {term!r}: the range is empty ({lo} > {hi})"
                )
            terms.append(("range", (lo, hi)))
        elif sep:
            raise InvalidInputError(f"unknown selection term {term!r}; use {SELECTION_HELP}")
        else:
            items = tuple(x.strip() for x in term.split(",") if x.strip())
            if not items:
                raise InvalidInputError(
                    f"selection term {term!r} lists nothing; use {SELECTION_HELP}"
                )
            terms.append(("list", items))
    return Selection(spec, tuple(terms))


# ---- hub ---------------------------------------------------------------------------


@dataclass
class HubRevisions(_LoadsByCheckpoint):
    """The ``step{N}-tokens{M}B`` branches of a hub repo, selected with a selection spec.

    Parameters
    ----------
    repo
        Hub repo id, e.g. ``"allenai/OLMoE-1B-7B-0924"``.
    select
        A selection (:func:`parse_selection`), default ``"all"``.
    pattern
        A regular expression with a ``step`` group (and optionally ``tokens`` and ``unit``)
        for repos that name branches differently.

    Notes
    -----
    After :meth:`checkpoints`, ``ignored`` lists the branches whose names did not match.
    """

    repo: str
    select: str = "all"
    pattern: str | None = None
    ignored: list[str] = field(default_factory=list, init=False)
    listed_from: str = field(default="", init=False)

    def describe(self) -> dict[str, Any]:
        return {"kind": "hub", "repo": self.repo}

    def checkpoints(self) -> list[Checkpoint]:
        selection = parse_selection(self.select)
        pattern = re.compile(self.pattern) if self.pattern else HUB_PATTERN
        branches, self.listed_from = list_hub_branches(self.repo)
        found, self.ignored = [], []
        for name in branches:
            parsed = parse_step_name(name, pattern)
            if parsed is None:
                self.ignored.append(name)
                continue
            step, tokens = parsed
            found.append(
                Checkpoint(step=step, tokens=tokens, revision=name, repo=self.repo, label=name)
            )
        if not found:
            raise ModelNotFoundError(
                f"{self.repo!r} has no branch named like step{{N}}-tokens{{M}}B among its "
                f"{len(branches)} branches; it publishes no intermediate checkpoints"
            )
        return selection.apply(_check_unique(found, f"repo {self.repo!r}"))


# ---- local -------------------------------------------------------------------------

MANIFEST_SUFFIXES = (".json", ".csv")


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read manifest {str(path)!r}: {exc.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                f"manifest {str(path)!r} is not valid JSON (line {exc.lineno}): {exc.msg}"
            ) from None
        if isinstance(data, dict):
            data = data.get("checkpoints")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InvalidInputError(
                f"manifest {str(path)!r} must be a list of objects with 'step' and 'path' "
                "(or {'checkpoints': [...]})"
            )
        return data
    rows = list(csv.DictReader(text.splitlines()))
    return [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in rows]


def _manifest_tokens(value: Any, where: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMBT]?)", str(value).strip())
    if m is None:
        raise InvalidInputError(f"{where}: tokens {value!r} is not a number such as 4e9 or 4B")
    try:
        return _tokens(m.group(1), m.group(2))
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise InvalidInputError(f"{where}: tokens {value!r} is not a number") from None


@dataclass
class LocalCheckpoints(_LoadsByCheckpoint):
    """HF checkpoints in a local folder, or listed in a manifest file.

    Parameters
    ----------
    path
        A folder whose sub-folders are named like :data:`LOCAL_PATTERN` (other entries are
        ignored and counted in ``ignored``), or a ``.json``/``.csv`` manifest with ``step``
        and ``path`` (relative to the manifest's folder) and optional ``tokens`` (a number,
        or ``4B``) and ``label``.
    select
        A selection (:func:`parse_selection`), default ``"all"``.

    Notes
    -----
    A matching sub-folder that is not a loadable checkpoint (no ``config.json``, corrupt
    weights) is still listed: the sweep records its failure and a later run retries it.
    """

    path: str | os.PathLike[str]
    select: str = "all"
    ignored: list[str] = field(default_factory=list, init=False)

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "path": str(Path(self.path).expanduser().resolve())}

    def checkpoints(self) -> list[Checkpoint]:
        selection = parse_selection(self.select)
        root = Path(self.path).expanduser()
        if root.is_file():
            if root.suffix.lower() not in MANIFEST_SUFFIXES:
                raise InvalidInputError(
                    f"{str(root)!r} is a file but not a .json or .csv manifest; pass a folder of "
                    "checkpoints or a manifest"
                )
            found = self._from_manifest(root)
        elif root.is_dir():
            found = self._from_folder(root)
        else:
            raise ModelNotFoundError(f"no such checkpoint folder or manifest: {str(root)!r}")
        return selection.apply(found)

    def _from_folder(self, root: Path) -> list[Checkpoint]:
        found, self.ignored = [], []
        for entry in sorted(root.iterdir()):
            parsed = parse_step_name(entry.name, LOCAL_PATTERN) if entry.is_dir() else None
            if parsed is None:
                self.ignored.append(entry.name)
                continue
            step, tokens = parsed
            found.append(
                Checkpoint(step=step, tokens=tokens, path=str(entry.resolve()), label=entry.name)
            )
        if not found:
            raise ModelNotFoundError(
                f"no checkpoint folders in {str(root)!r} ({len(self.ignored)} other entries); "
                "expected sub-folders named step_000100, step100, checkpoint-100 or "
                "step100-tokens4B, or pass a manifest"
            )
        return _check_unique(found, f"folder {str(root)!r}")

    def _from_manifest(self, manifest: Path) -> list[Checkpoint]:
        rows = _manifest_rows(manifest)
        found: list[Checkpoint] = []
        for i, row in enumerate(rows, start=1):
            where = f"manifest {str(manifest)!r} entry {i}"
            if row.get("step") in (None, "") or row.get("path") in (None, ""):
                raise InvalidInputError(f"{where} needs both 'step' and 'path'")
            try:
                step = int(row["step"])
            except (TypeError, ValueError):
                step = -1
            if step < 0:
                raise InvalidInputError(f"{where}: step {row['step']!r} is not an integer >= 0")
            folder = (manifest.parent / str(row["path"])).expanduser()
            if not folder.exists():
                raise ModelNotFoundError(f"{where}: no such checkpoint folder {str(folder)!r}")
            found.append(
                Checkpoint(
                    step=step,
                    tokens=_manifest_tokens(row.get("tokens"), where),
                    path=str(folder.resolve()),
                    label=str(row.get("label") or row["path"]),
                )
            )
        if not found:
            raise ModelNotFoundError(f"manifest {str(manifest)!r} lists no checkpoints")
        return _check_unique(found, f"manifest {str(manifest)!r}")


__all__ = [
    "HUB_PATTERN",
    "LOCAL_PATTERN",
    "SELECTION_HELP",
    "Checkpoint",
    "CheckpointSource",
    "HubRevisions",
    "LocalCheckpoints",
    "Selection",
    "list_hub_branches",
    "parse_selection",
    "parse_step_name",
]
