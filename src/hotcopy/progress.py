"""Turning workflow events into what the operator sees: rich progress, or nothing.

Workflows report through the Reporter protocol and never print; the CLI picks the
renderer (a live terminal display on stderr, or silence when ``--json`` asks for one
machine-readable document on stdout).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def step_started(self, name: str, title: str) -> None: ...
    def step_finished(self, name: str, outcome: str, seconds: float, detail: str = "") -> None: ...
    def progress(self, done: int, total: int | None, rate: float | None) -> None: ...
    def note(self, text: str) -> None: ...
    def warning(self, text: str) -> None: ...


class NullReporter:
    def step_started(self, name: str, title: str) -> None:
        log.info("step %s: %s", name, title)

    def step_finished(self, name: str, outcome: str, seconds: float, detail: str = "") -> None:
        log.info("step %s %s in %.3fs %s", name, outcome, seconds, detail)

    def progress(self, done: int, total: int | None, rate: float | None) -> None:
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

    def step_started(self, name: str, title: str) -> None:
        self._end_progress()
        self.console.print(f"[bold cyan]→[/] {escape(title)} [dim]({name})[/]")

    def step_finished(self, name: str, outcome: str, seconds: float, detail: str = "") -> None:
        self._end_progress()
        mark = {"done": "[green]✓[/]", "skipped": "[dim]-[/]"}.get(outcome, "[red]✗[/]")
        extra = f" — {escape(detail)}" if detail else ""
        self.console.print(f"  {mark} {name} {outcome} in {_duration(seconds)}{extra}")

    def progress(self, done: int, total: int | None, rate: float | None) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("  transfer"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn(), console=self.console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task("transfer", total=total)
        assert self._task is not None
        now = time.monotonic()
        if total is not None and done > total:
            total = done
        if now - self._last_refresh > 0.1 or (total is not None and done >= total):
            self._progress.update(self._task, completed=done, total=total)
            self._last_refresh = now

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


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
