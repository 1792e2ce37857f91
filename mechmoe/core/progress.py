"""Progress: the one mechanism through which long work reports how far it got.

Library code opens a task and advances it::

    with task("attribute neuron", total=n_batches) as bar:
        for batch in batches:
            ...
            bar.advance()

and stays silent unless a *reporter* is installed. The CLI installs one around every
command (:func:`rich_reporting`): rich progress bars (transient, with elapsed time and an
ETA) on a terminal, or plain text lines every few seconds when stderr is not a terminal
(logs, CI; ``$MECHMOE_PROGRESS_INTERVAL`` sets the seconds, and a task shorter than that
prints nothing). Tasks nest: a task opened while another runs in the same thread is shown
under it.

Functions with a ``progress: bool`` parameter open their task with ``show=progress``:
``False`` keeps them silent even under a reporter, ``True`` reports to the installed
reporter or, when none is installed (a script or notebook), to a default one on stderr
for the duration of the task.

Examples
--------
>>> from mechmoe.core.progress import Recorder, reporting, task
>>> with reporting(Recorder()) as rec:
...     with task("outer", total=2) as bar:
...         bar.advance()
...         with task("inner") as sub:
...             sub.advance(3)
...         bar.advance()
>>> [(e.kind, e.description, e.completed) for e in rec.events if e.kind != "start"]
[('advance', 'outer', 1.0), ('advance', 'inner', 3.0), ('finish', 'inner', 3.0), ('advance', 'outer', 2.0), ('finish', 'outer', 2.0)]
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# ---- tasks ---------------------------------------------------------------------------------
_ids = itertools.count(1)
_lock = threading.RLock()
_reporters: list[Reporter] = []
_local = threading.local()


@dataclass
class TaskState:
    """What a reporter knows about one task."""

    id: int
    description: str
    total: float | None
    depth: int
    parent: int | None
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    failed: bool = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def eta(self) -> float | None:
        """Seconds left at the average rate so far (``None`` without a total or a rate)."""
        if not self.total or self.completed <= 0:
            return None
        rate = self.completed / max(self.elapsed, 1e-9)
        return max(self.total - self.completed, 0.0) / rate


class Reporter:
    """Receives task events; subclasses render them. Every method may run in any thread."""

    def start(self, state: TaskState) -> None:
        """A task began."""

    def advance(self, state: TaskState, n: int | float) -> None:
        """``state.completed`` grew by ``n``."""

    def update(self, state: TaskState) -> None:
        """The task's description or total changed."""

    def finish(self, state: TaskState) -> None:
        """The task ended (normally or by an exception)."""

    def close(self) -> None:
        """The reporter is being uninstalled."""


class Bar:
    """The handle :func:`task` yields: advance it, or change its description or total."""

    def __init__(self, state: TaskState | None, reporter: Reporter | None) -> None:
        self._state, self._reporter = state, reporter

    @property
    def completed(self) -> float:
        return 0.0 if self._state is None else self._state.completed

    def advance(self, n: int | float = 1) -> None:
        if self._state is None or self._reporter is None:
            return
        with _lock:
            self._state.completed += n
            self._reporter.advance(self._state, n)

    def update(self, *, description: str | None = None, total: int | float | None = None) -> None:
        if self._state is None or self._reporter is None:
            return
        with _lock:
            if description is not None:
                self._state.description = description
            if total is not None:
                self._state.total = float(total)
            self._reporter.update(self._state)


def _stack() -> list[TaskState]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _current() -> Reporter | None:
    with _lock:
        return _reporters[-1] if _reporters else None


def active() -> bool:
    """Whether a reporter is installed (so a task opened now would be shown)."""
    return _current() is not None


@contextlib.contextmanager
def task(
    description: str, total: int | float | None = None, *, show: bool | None = None
) -> Iterator[Bar]:
    """Report the progress of a piece of work.

    Parameters
    ----------
    description
        What is being done, e.g. ``"attribute neuron"``.
    total
        Units of work (``None``: unknown, shown without a bar or ETA).
    show
        ``None`` (default): report to the installed reporter, silent if there is none.
        ``False``: silent. ``True``: report to the installed reporter, or to a default
        one on stderr (rich on a terminal, plain lines otherwise) while the task runs.

    Yields
    ------
    Bar
        ``bar.advance(n=1)``; ``bar.update(description=..., total=...)``.
    """
    if show is False:
        yield Bar(None, None)
        return
    reporter = _current()
    if reporter is None:
        if show:
            with rich_reporting():
                with task(description, total) as bar:
                    yield bar
        else:
            yield Bar(None, None)
        return
    stack = _stack()
    parent = stack[-1] if stack else None
    state = TaskState(
        id=next(_ids),
        description=description,
        total=None if total is None else float(total),
        depth=0 if parent is None else parent.depth + 1,
        parent=None if parent is None else parent.id,
    )
    with _lock:
        reporter.start(state)
    stack.append(state)
    try:
        yield Bar(state, reporter)
    except BaseException:
        state.failed = True
        raise
    finally:
        stack.remove(state)
        with _lock:
            reporter.finish(state)


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Install ``reporter`` for the duration of the block (the innermost one wins)."""
    with _lock:
        _reporters.append(reporter)
    try:
        yield reporter
    finally:
        with _lock:
            _reporters.remove(reporter)
        reporter.close()


# ---- reporters -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One event seen by :class:`Recorder`."""

    kind: str  # start | advance | update | finish
    id: int
    description: str
    completed: float
    total: float | None
    depth: int


class Recorder(Reporter):
    """Keeps every event in ``events`` (for tests and for callers that aggregate progress)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def _add(self, kind: str, s: TaskState) -> None:
        self.events.append(Event(kind, s.id, s.description, s.completed, s.total, s.depth))

    def start(self, state: TaskState) -> None:
        self._add("start", state)

    def advance(self, state: TaskState, n: int | float) -> None:
        self._add("advance", state)

    def update(self, state: TaskState) -> None:
        self._add("update", state)

    def finish(self, state: TaskState) -> None:
        self._add("finish", state)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


class PlainReporter(Reporter):
    """Plain text lines for logs: at most one every ``interval`` seconds per task while it
    runs (count, percentage, elapsed, ETA), and one when a task that printed ends.

    A task shorter than ``interval`` prints nothing, so quick commands stay quiet (and a
    user error stays one line).
    """

    def __init__(self, write: Any, *, interval: int | float = 5.0) -> None:
        self._write = write
        self.interval = interval
        self._last: dict[int, float] = {}
        self._printed: set[int] = set()

    def _line(self, state: TaskState, text: str) -> None:
        self._write("  " * state.depth + text)

    def _status(self, s: TaskState) -> str:
        done = _count(s.completed)
        if s.total:
            pct = 100.0 * s.completed / s.total
            text = f"{s.description}: {done}/{_count(s.total)} ({pct:.0f}%), {_clock(s.elapsed)}"
            eta = s.eta
            if eta is not None:
                text += f", ETA {_clock(eta)}"
            return text
        return f"{s.description}: {done}, {_clock(s.elapsed)}"

    def start(self, state: TaskState) -> None:
        self._last[state.id] = time.monotonic()

    def advance(self, state: TaskState, n: int | float) -> None:
        now = time.monotonic()
        if now - self._last.get(state.id, now) >= self.interval:
            self._last[state.id] = now
            self._printed.add(state.id)
            self._line(state, self._status(state))

    def update(self, state: TaskState) -> None:
        self.advance(state, 0)

    def finish(self, state: TaskState) -> None:
        self._last.pop(state.id, None)
        if state.id not in self._printed:
            return
        self._printed.discard(state.id)
        done, elapsed = _count(state.completed), _clock(state.elapsed)
        if state.failed:
            total = f"/{_count(state.total)}" if state.total else ""
            self._line(state, f"{state.description}: stopped at {done}{total} after {elapsed}")
        else:
            self._line(state, f"{state.description}: done {done} in {elapsed}")


class RichReporter(Reporter):
    """Rich progress bars on a terminal: transient, with count, elapsed time and ETA.

    The live display runs only while a task is open, so a command's own output printed
    between tasks is never drawn over.
    """

    def __init__(self, console: Any) -> None:
        self.console = console
        self._progress: Any = None
        self._tasks: dict[int, Any] = {}

    def _ensure(self) -> Any:
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        return self._progress

    def start(self, state: TaskState) -> None:
        progress = self._ensure()
        label = "  " * state.depth + state.description
        self._tasks[state.id] = progress.add_task(label, total=state.total)

    def advance(self, state: TaskState, n: int | float) -> None:
        if self._progress is not None and state.id in self._tasks:
            self._progress.advance(self._tasks[state.id], n)

    def update(self, state: TaskState) -> None:
        if self._progress is not None and state.id in self._tasks:
            self._progress.update(
                self._tasks[state.id],
                description="  " * state.depth + state.description,
                total=state.total,
            )

    def finish(self, state: TaskState) -> None:
        tid = self._tasks.pop(state.id, None)
        if self._progress is None or tid is None:
            return
        self._progress.remove_task(tid)
        if not self._tasks:
            self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        self._tasks.clear()
        self._stop()


def _default_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


#: Environment variable: seconds between plain progress lines (default 5).
INTERVAL_ENV = "MECHMOE_PROGRESS_INTERVAL"


def _interval(interval: int | float | None) -> float:
    if interval is not None:
        return float(interval)
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, "5")))
    except ValueError:
        return 5.0


def reporter_for(console: Any = None, *, interval: int | float | None = None) -> Reporter:
    """Rich bars if ``console`` (default: stderr) is a terminal, else plain lines.

    ``interval``: seconds between plain lines per task; default ``$MECHMOE_PROGRESS_INTERVAL``
    or 5.
    """
    interval = _interval(interval)
    console = _default_console() if console is None else console
    if getattr(console, "is_terminal", False) and not getattr(console, "is_dumb_terminal", False):
        return RichReporter(console)

    def write(line: str) -> None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    return PlainReporter(write, interval=interval)


@contextlib.contextmanager
def rich_reporting(
    console: Any = None, *, interval: int | float | None = None
) -> Iterator[Reporter]:
    """Render progress on ``console`` (a rich Console; default stderr) for the block.

    On a terminal: rich progress bars; otherwise plain lines, at most one every
    ``interval`` seconds per task (default ``$MECHMOE_PROGRESS_INTERVAL`` or 5).
    """
    with reporting(reporter_for(console, interval=interval)) as reporter:
        yield reporter


__all__ = [
    "INTERVAL_ENV",
    "Bar",
    "Event",
    "PlainReporter",
    "Recorder",
    "Reporter",
    "RichReporter",
    "TaskState",
    "active",
    "reporter_for",
    "reporting",
    "rich_reporting",
    "task",
]
