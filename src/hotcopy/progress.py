"""Turning workflow events into what the operator sees: rich progress, or nothing.

Workflows report through the Reporter protocol and never print; the CLI picks the
renderer: a live terminal display on stderr; plain timestamped lines when stderr is no
terminal (cron, nohup, a log file), so a multi-hour copy still says how far it is; or
silence when ``--json`` asks for one machine-readable document on stdout.

Sizes are decimal everywhere (kB, MB, GB: powers of 1000), as rsync, rich's bars and
the step details print them, so one copy never shows two different numbers.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
)

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def step_started(self, name: str, title: str) -> None: ...
    def step_finished(self, name: str, outcome: str, seconds: float, detail: str = "") -> None: ...
    def progress(self, done: int, total: int | None, rate: float | None) -> None: ...
    def pacing(self, text: str) -> None:
        """The latency throttle's state, shown beside the copy's progress."""
    def note(self, text: str) -> None: ...
    def warning(self, text: str) -> None: ...


class NullReporter:
    current_step: str | None = None

    def step_started(self, name: str, title: str) -> None:
        self.current_step = name
        log.info("step %s: %s", name, title)

    def step_finished(self, name: str, outcome: str, seconds: float, detail: str = "") -> None:
        log.info("step %s %s in %.3fs %s", name, outcome, seconds, detail)

    def progress(self, done: int, total: int | None, rate: float | None) -> None:
        return None

    def pacing(self, text: str) -> None:
        return None

    def note(self, text: str) -> None:
        log.info("%s", text)

    def warning(self, text: str) -> None:
        log.warning("%s", text)


class ConsoleReporter:
    """One line per step with its duration; a transfer bar with throughput and ETA."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_refresh = 0.0
        self._started = 0.0
        self._pacing = ""
        self.current_step: str | None = None

    def step_started(self, name: str, title: str) -> None:
        self._end_progress()
        self.current_step = name
        self._pacing = ""
        self._started = time.monotonic()
        self.console.print(f"[bold cyan]→[/] {escape(title)} [dim]({name})[/]")

    def step_finished(self, name: str, outcome: str, seconds: float, detail: str = "") -> None:
        self._end_progress()
        mark = {"done": "[green]✓[/]", "skipped": "[dim]-[/]"}.get(outcome, "[red]✗[/]")
        extra = f" — {escape(detail)}" if detail else ""
        self.console.print(f"  {mark} {name} {outcome} in {human_duration(seconds)}{extra}")

    def progress(self, done: int, total: int | None, rate: float | None) -> None:
        now = time.monotonic()
        if self._progress is None:
            # Rate and ETA are the copy's average so far, the figure the step reports at
            # its end, not rich's short-window estimate that swings with every file.
            self._progress = Progress(
                TextColumn("  transfer"), BarColumn(), DownloadColumn(),
                TextColumn("{task.fields[speed]}"), console=self.console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task("transfer", total=total, speed="")
        assert self._task is not None
        if total is not None and done > total:
            total = done
        if now - self._last_refresh > 0.1 or (total is not None and done >= total):
            elapsed = now - self._started
            average = done / elapsed if elapsed > 0 and done else None
            speed = "" if average is None else f"{human_bytes(average)}/s"
            if average and total and total > done:
                speed += f", ETA {human_duration((total - done) / average)}"
            if self._pacing:
                speed += f" | {self._pacing}"
            self._progress.update(self._task, completed=done, total=total, speed=speed)
            self._last_refresh = now

    def pacing(self, text: str) -> None:
        self._pacing = text

    def _end_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None

    def note(self, text: str) -> None:
        self._end_progress()
        self.console.print(f"  {escape(text)}")

    def warning(self, text: str) -> None:
        self._end_progress()
        self.console.print(f"  [yellow]warning:[/] {escape(text)}")

    def urgent(self, text: str) -> None:
        """From a signal handler: printed above a running bar, which is left alone
        (stopping it here would join its refresh thread, which may wait for us)."""
        self.console.print(f"  [bold yellow]{escape(text)}[/]")


class PlainReporter:
    """Timestamped lines without a terminal: each step, and the copy every ``interval_s``.

    A bar written to a file shows up once, at 100 %; from cron or nohup a copy of hours
    must say, every few seconds of the log, how much is done, how fast, and how long
    it still takes. The first progress reading and the last one are always written.
    """

    def __init__(self, stream: TextIO, interval_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval_s = interval_s
        self._clock = clock
        self._step = ""
        self._last: float | None = None
        self._wrote_end = False
        self._step_started = clock()
        self._pacing = ""
        # Re-entrant: the signal acknowledgement may write while a line is half written.
        self._lock = threading.RLock()
        self.current_step: str | None = None

    def _line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._lock:
            self.stream.write(f"{stamp} {text}\n")
            self.stream.flush()

    def step_started(self, name: str, title: str) -> None:
        self.current_step = name
        self._step, self._last, self._wrote_end, self._pacing = name, None, False, ""
        self._step_started = self._clock()
        self._line(f"step {name}: {title}")

    def step_finished(self, name: str, outcome: str, seconds: float, detail: str = "") -> None:
        self._line(f"step {name} {outcome} in {human_duration(seconds)}"
                   + (f" - {detail}" if detail else ""))

    def progress(self, done: int, total: int | None, rate: float | None) -> None:
        now = self._clock()
        finished = total is not None and done >= total
        if self._wrote_end or (self._last is not None and now - self._last < self.interval_s
                               and not finished):
            return
        self._last, self._wrote_end = now, finished
        # The average since the step began: the rate the step reports when it ends.
        elapsed = now - self._step_started
        average = done / elapsed if elapsed > 0 and done else None
        pacing = f" | {self._pacing}" if self._pacing else ""
        self._line(f"{self._step or 'transfer'}: {progress_text(done, total, average)}{pacing}")

    def pacing(self, text: str) -> None:
        self._pacing = text

    def note(self, text: str) -> None:
        self._line(text)

    def warning(self, text: str) -> None:
        self._line(f"warning: {text}")


def progress_text(done: int, total: int | None, rate: float | None) -> str:
    """``1.2 GB of 4.0 GB (30%), 85.3 MB/s, ETA 33 s``: what a log line of a copy says."""
    parts = [human_bytes(done)]
    if total:
        parts = [f"{human_bytes(done)} of {human_bytes(total)} ({min(done / total, 1):.0%})"]
    if rate:
        parts.append(f"{human_bytes(rate)}/s")
        if total and total > done:
            parts.append(f"ETA {human_duration((total - done) / rate)}")
    return ", ".join(parts)


@contextmanager
def acknowledge_signals(reporter: Reporter) -> Iterator[None]:
    """Say at once that SIGINT/SIGTERM arrived and what happens now, then pass it on.

    The handler underneath raises into the running step, which may take seconds to
    wind down (a transfer's processes are stopped, their threads joined): without a
    word, the operator sees a frozen bar and presses Ctrl-C again.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    said: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def acknowledge(signum: int, frame: FrameType | None) -> None:
        if not said:
            said.append(signum)
            current = getattr(reporter, "current_step", None)
            where = f"the current step ({current})" if current else "the current step"
            say = getattr(reporter, "urgent", reporter.warning)
            say(f"{signal.Signals(signum).name} received: stopping {where} safely, then "
                "rolling back every change of this job; let it finish (a second signal "
                "does not skip the rollback)")
        handler = previous[signal.Signals(signum)]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.default_int_handler(signum, frame)

    for sig in previous:
        signal.signal(sig, acknowledge)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def human_duration(seconds: float) -> str:
    """``850 ms``, ``15.9 s``, ``4 min 12 s``, ``2 h 05 min``: never ``15869.7 ms``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"{hours} h {rest:02d} min"


def human_bytes(count: float) -> str:
    """Decimal units (1 MB = 10^6 bytes), the ones rsync and the progress bar print."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
