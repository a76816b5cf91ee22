"""Commands that change who is master: topology, switchover, failover, rejoin."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from hotcopy.cli.base import (
    CONFIG_OPTION,
    JSON_OPTION,
    _fail,
    _guard,
    _open,
    cli,
    err_console,
    out_console,
)
from hotcopy.cli.render import (
    _finish,
    _render_report,
)
from hotcopy.errors import ExitCode, RefusedError
from hotcopy.progress import (
    ConsoleReporter,
    NullReporter,
    Reporter,
)
from hotcopy.runtime import Runtime

log = logging.getLogger(__name__)


# -- switchover, failover, rejoin, topology (issue 12) ---------------------------------


@cli.command()
@CONFIG_OPTION
@JSON_OPTION
def topology(config_path: str, as_json: bool) -> None:
    """The shard as it is: who replicates from whom, GTID positions per domain, lag,
    read_only, errant transactions, crash-safety. Read-only; exit 1 if problems found.

    \b
    Example:
      hotcopy topology --config shard1.toml --json
    """
    from hotcopy.workflows import topology as workflow

    def run() -> None:
        config, _ = _open(config_path)
        runtime = Runtime(config)
        try:
            view = workflow.read_shard(runtime)
        finally:
            runtime.close()
        if as_json:
            click.echo(json.dumps(view.as_dict(), indent=2, default=str))
        else:
            for line in workflow.render(view):
                out_console.print(line)
        sys.exit(int(ExitCode.FAILED_ROLLED_BACK if view.problems else ExitCode.OK))

    _guard(run)



@cli.command()
@CONFIG_OPTION
@click.option("--to", "candidate", required=True, help="Replica to promote (a [servers] name).")
@click.option("--dry-run", is_flag=True, help="Print the checks and the plan; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--kill-writers", is_flag=True,
              help="Kill write transactions still open on the old master after "
                   "[promotion] drain_timeout_s (default: give up and roll back).")
@JSON_OPTION
def switchover(config_path: str, candidate: str, dry_run: bool, yes: bool, kill_writers: bool,
               as_json: bool) -> None:
    """Planned change of master: make CANDIDATE the master, the old one its replica.

    \b
    Undone entirely on any failure until the candidate is writable (the step
    `promote`, the point of no return); after it, failures exit 3 with what is
    left, and `hotcopy resume JOB` finishes. Exit 2: refused, nothing changed.

    \b
    Example:
      hotcopy switchover --config shard1.toml --to db2 --dry-run
    """
    from hotcopy.workflows import switchover as workflow
    from hotcopy.workflows.report import job_report

    def run() -> None:
        config, journal = _open(config_path, writes=not dry_run)
        if dry_run or not yes:
            runtime = Runtime(config)
            try:
                view, problems = workflow.check(runtime, candidate)
            finally:
                runtime.close()
            _render_promotion_plan(view.as_dict(), problems, workflow.STEPS, as_json)
            if problems:
                sys.exit(int(ExitCode.REFUSED))
            if dry_run:
                return
            if not sys.stdin.isatty():
                _fail(RefusedError("refusing to start without confirmation: add --yes"))
            if not click.confirm(f"Switch the master over to {candidate}?", err=True):
                sys.exit(int(ExitCode.REFUSED))
        reporter: Reporter = NullReporter() if as_json else ConsoleReporter(err_console)
        outcome = workflow.start(Runtime(config), journal, candidate, reporter,
                                 kill_writers=kill_writers)
        _finish_promotion(job_report(journal, outcome.job.id), outcome, as_json)

    _guard(run)


def _render_promotion_plan(view: dict[str, Any], problems: list[str], steps: list[Any],
                           as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"plan": [{"step": s.name, "does": s.title} for s in steps],
                               "refused": problems, "topology": view}, indent=2, default=str))
        return
    table = Table("#", "step", "what it does", title="plan")
    for i, step in enumerate(steps, 1):
        table.add_row(str(i), step.name, step.title)
    err_console.print(table)
    for problem in problems:
        err_console.print(f"[red]refused[/]: {escape(problem)}")
    if not problems:
        err_console.print("[green]preflight: no problems found[/]")


def _finish_promotion(report: dict[str, Any], outcome: Any, as_json: bool) -> None:
    """Like _finish, but past the point of no return the way on is resume, not rollback."""
    from hotcopy.workflows.promotion_steps import Attention

    if not isinstance(outcome.error, Attention):
        _finish(report, outcome.exit_code, outcome.error, as_json)
    if as_json:
        click.echo(json.dumps({**report, "exit_code": int(outcome.exit_code)}, indent=2,
                              default=str))
    else:
        _render_report(report)
    err_console.print(f"[bold red]{report['job']}: {escape(outcome.error.message)}[/]")
    err_console.print(f"[yellow]hint: {escape(outcome.error.hint or '')}[/]")
    sys.exit(int(outcome.exit_code))


@cli.command()
@CONFIG_OPTION
@click.option("--to", "candidate", default=None,
              help="Replica to promote; refused if it lacks GTIDs another replica has.")
@click.option("--dry-run", is_flag=True, help="Run the detection only; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True,
              help="Promote even when the replicas are incomparable (GTIDs are lost).")
@JSON_OPTION
def failover(config_path: str, candidate: str | None, dry_run: bool, yes: bool, force: bool,
             as_json: bool) -> None:
    """The master is dead: promote the most advanced replica, repoint the others, fence
    the old master.

    \b
    Refused (exit 2) unless the master is unreachable over SQL, its mysqld is not
    running on its host, and every replica's IO thread fails to reach it.

    \b
    Example:
      hotcopy failover --config shard1.toml --dry-run
    """
    from hotcopy.workflows import failover as workflow
    from hotcopy.workflows.report import job_report

    def run() -> None:
        config, journal = _open(config_path, writes=not dry_run)
        if dry_run or not yes:
            runtime = Runtime(config)
            try:
                view, problems = workflow.check(runtime)
            finally:
                runtime.close()
            _render_promotion_plan(view.as_dict(), problems, workflow.STEPS, as_json)
            if problems:
                sys.exit(int(ExitCode.REFUSED))
            if dry_run:
                return
            if not sys.stdin.isatty():
                _fail(RefusedError("refusing to start without confirmation: add --yes"))
            if not click.confirm("Fail the master over?", err=True):
                sys.exit(int(ExitCode.REFUSED))
        reporter: Reporter = NullReporter() if as_json else ConsoleReporter(err_console)
        outcome = workflow.start(Runtime(config), journal, reporter, to=candidate, force=force)
        _finish_promotion(job_report(journal, outcome.job.id), outcome, as_json)

    _guard(run)


@cli.command()
@CONFIG_OPTION
@click.argument("name")
@JSON_OPTION
def rejoin(config_path: str, name: str, as_json: bool) -> None:
    """Make NAME (e.g. a master deposed by a failover) a replica of the master again.

    \b
    Demoted in place when it has no errant GTIDs; otherwise re-seeded by a clone from a
    healthy replica (its data is replaced; the clone's own rules and rollback apply).

    \b
    Example:
      hotcopy rejoin --config shard1.toml db1
    """
    from hotcopy.workflows import rejoin as workflow
    from hotcopy.workflows.report import job_report

    def run() -> None:
        config, journal = _open(config_path, writes=True)
        reporter: Reporter = NullReporter() if as_json else ConsoleReporter(err_console)
        outcome = workflow.start(Runtime(config), journal, name, reporter)
        _finish_promotion(job_report(journal, outcome.job.id), outcome, as_json)

    _guard(run)
