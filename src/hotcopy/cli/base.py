"""What every command shares: the group, common options, opening the journal, failing well."""

from __future__ import annotations

import atexit
import logging
import sys
import time
from collections.abc import Callable
from typing import NoReturn

import click
from rich.console import Console
from rich.markup import escape

from hotcopy import config as config_module
from hotcopy.errors import HotcopyError
from hotcopy.progress import (
    ConsoleReporter,
    NullReporter,
    PlainReporter,
    Reporter,
)
from hotcopy.saga import Journal
from hotcopy.saga.factory import open_journal

log = logging.getLogger(__name__)

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False)

CONFIG_OPTION = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    envvar="HOTCOPY_CONFIG", help="TOML config of the shard (env: HOTCOPY_CONFIG).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document on stdout instead of tables.")


def _fail(error: HotcopyError) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(error.message)}")
    if error.hint:
        err_console.print(f"[dim]hint: {escape(error.hint)}[/]")
    sys.exit(int(error.exit_code))


PROGRESS_OPTION = click.option(
    "--progress-interval", "progress_interval", default=30.0, show_default=True,
    type=click.FloatRange(min=0), metavar="SECONDS",
    help="Without a terminal (cron, nohup, a log file): write a progress line of the copy "
         "(bytes, %, rate, ETA) this often.")


def _reporter(as_json: bool, interval_s: float = 30.0) -> Reporter:
    """A live bar on a terminal, timestamped lines in a log, nothing under --json."""
    if as_json:
        return NullReporter()
    if err_console.is_terminal:
        return ConsoleReporter(err_console)
    return PlainReporter(sys.stderr, interval_s)


class _ConsoleLogHandler(logging.Handler):
    """``warning: ...`` for people; the timestamped logger form only with -v/-vv."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = escape(record.getMessage())
            if record.levelno >= logging.ERROR:
                err_console.print(f"[bold red]error:[/] {message}")
            elif record.levelno >= logging.WARNING:
                err_console.print(f"[yellow]warning:[/] {message}")
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
                err_console.print(f"[dim]{stamp} {record.name}:[/] {message}")
        except Exception:  # a log line must never take the command down
            self.handleError(record)


def _guard(fn: Callable[[], None]) -> None:
    try:
        fn()
    except HotcopyError as exc:
        _fail(exc)


def _open(config_path: str, *, writes: bool = False,
          create_directory: bool = False) -> tuple[config_module.Config, Journal]:
    """Only a command that may start a job creates a journal file (and only when asked,
    its directory); every other command leaves the disk as it found it."""
    config = config_module.load(config_path)
    journal = open_journal(config, writes=writes, create_directory=create_directory)
    # A clean exit (sys.exit included) gives up the etcd lease at once, so the job can be
    # taken over without waiting for the TTL; SIGKILL does not, which is the point.
    atexit.register(journal.close)
    return config, journal


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True,
              help="-v: log each step; -vv: every command and query.")
@click.version_option(package_name="hotcopy")
def cli(verbose: int) -> None:
    """Re-seed a MySQL/MariaDB replica from a healthy replica of the same shard.

    \b
    The source replica is paused for milliseconds (SQL thread stopped, a short backup
    lock, a filesystem snapshot) and released at once; the snapshot travels to the
    target directly; the target starts on it, replicates from the recorded position,
    and is verified. Every change is journaled with its undo first: on any failure,
    or after a crash of this machine, everything is rolled back on every host.

    \b
    Exit codes: 0 done, 1 failed and rolled back, 2 refused (nothing changed),
                3 rollback incomplete (a human must look: see `hotcopy show JOB`).

    \b
    Example:
      hotcopy demo                                   (a local sandbox shard, a clone under load)
      hotcopy check --config shard1.toml             (is this shard ready?)
      hotcopy clone --config shard1.toml --source db2 --target db3 --dry-run

    \b
    Shell completion (bash; zsh and fish alike with zsh_source / fish_source):
      eval "$(_HOTCOPY_COMPLETE=bash_source hotcopy)"
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = _ConsoleLogHandler()
    logging.basicConfig(level=level, handlers=[handler], force=True)
