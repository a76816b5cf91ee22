"""Commands on jobs: start a clone, resume, roll back, list, show, locks, cleanup."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from hotcopy.cli.base import (
    CONFIG_OPTION,
    JSON_OPTION,
    PROGRESS_OPTION,
    _fail,
    _guard,
    _open,
    _reporter,
    cli,
    out_console,
)
from hotcopy.cli.render import (
    _finish,
    _render_plan,
    _render_report,
    _state,
)
from hotcopy.errors import ExitCode, RefusedError
from hotcopy.runtime import Runtime
from hotcopy.saga import Journal

log = logging.getLogger(__name__)


@cli.command()
@CONFIG_OPTION
@click.option("--source", required=True, help="Healthy replica to copy from (a [servers] name).")
@click.option("--target", required=True, help="Replica to re-seed (a [servers] name).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan and the preflight findings; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--transfer", type=click.Choice(["auto", "rsyncd", "rsync_ssh", "stream",
                                               "zfs_send"]),
              help="How the snapshot travels (default: [transfer] method, else the first "
                   "that both hosts support).")
@click.option("--create-journal", is_flag=True,
              help="Create the journal's directory if it does not exist (else refused: a "
                   "typo in [journal] path would split the job history).")
@PROGRESS_OPTION
@JSON_OPTION
def clone(config_path: str, source: str, target: str, dry_run: bool, yes: bool,
          transfer: str | None, create_journal: bool, progress_interval: float,
          as_json: bool) -> None:
    """Re-seed TARGET with a snapshot of SOURCE, transactionally.

    \b
    Example:
      hotcopy clone --config shard1.toml --source db2 --target db3 --dry-run
      hotcopy clone --config shard1.toml --source db2 --target db3 --yes
    """
    from hotcopy.workflows import clone as workflow
    from hotcopy.workflows.report import job_report

    def run() -> None:
        config, journal = _open(config_path, writes=not dry_run,
                                create_directory=create_journal)
        runtime = Runtime(config)
        if dry_run or not yes:
            findings = workflow.plan(runtime, journal, source, target, transfer)
            runtime.close()
            steps = workflow.steps_for(findings.facts.get("pipeline"))
            _render_plan(findings.as_dict(), steps, as_json)
            if findings.errors:
                sys.exit(int(ExitCode.REFUSED))
            if dry_run:
                return
            if not sys.stdin.isatty():
                _fail(RefusedError("refusing to start without confirmation: add --yes"))
            if not click.confirm(f"Re-seed {target} from {source}?", err=True):
                sys.exit(int(ExitCode.REFUSED))
        reporter = _reporter(as_json, progress_interval)
        outcome = workflow.start(Runtime(config), journal, source, target, reporter,
                                 transfer=transfer)
        _finish(job_report(journal, outcome.job.id), outcome.exit_code, outcome.error, as_json)

    _guard(run)


@cli.command()
@CONFIG_OPTION
@click.argument("job_id", metavar="JOB")
@PROGRESS_OPTION
@JSON_OPTION
def resume(config_path: str, job_id: str, progress_interval: float, as_json: bool) -> None:
    """Continue JOB from where its controller stopped (e.g. after a crash).

    \b
    Example:
      hotcopy resume --config shard1.toml 20261201-102733-1602
    """
    from hotcopy.workflows import clone as workflow
    from hotcopy.workflows.report import job_report

    def run() -> None:
        config, journal = _open(config_path)
        reporter = _reporter(as_json, progress_interval)
        outcome = _workflow_for(journal, job_id, workflow).resume(Runtime(config), journal,
                                                                  job_id, reporter)
        _finish(job_report(journal, job_id), outcome.exit_code, outcome.error, as_json)

    _guard(run)


@cli.command()
@CONFIG_OPTION
@click.argument("job_id", metavar="JOB")
@JSON_OPTION
def rollback(config_path: str, job_id: str, as_json: bool) -> None:
    """Undo everything JOB changed that is still outstanding, on every host.

    \b
    Example:
      hotcopy rollback --config shard1.toml 20261201-102733-1602
    """
    from hotcopy.workflows import clone as workflow
    from hotcopy.workflows.report import job_report

    def run() -> None:
        config, journal = _open(config_path)
        reporter = _reporter(as_json)
        outcome = _workflow_for(journal, job_id, workflow).rollback(Runtime(config), journal,
                                                                    job_id, reporter)
        _finish(job_report(journal, job_id), outcome.exit_code, outcome.error, as_json)

    _guard(run)


@cli.command()
@CONFIG_OPTION
@click.option("--limit", default=20, show_default=True, help="How many recent jobs.")
@JSON_OPTION
def jobs(config_path: str, limit: int, as_json: bool) -> None:
    """List recent jobs, newest first.

    \b
    Example:
      hotcopy jobs --config shard1.toml --limit 5
      hotcopy jobs --config shard1.toml --json | jq '.[] | select(.state != "committed")'
    """
    from hotcopy.workflows.report import display_state, job_error

    def run() -> None:
        _, journal = _open(config_path)
        rows = journal.list_jobs(limit=limit)
        if as_json:
            click.echo(json.dumps([{"job": j.id, "kind": j.kind, "state": display_state(j),
                                    "source": j.params.get("source"),
                                    "target": j.params.get("target"), "created": j.created,
                                    "error": job_error(j)} for j in rows], indent=2))
            return
        table = Table("job", "kind", "state", "source → target", "started", "error")
        for j in rows:
            table.add_row(j.id, j.kind, _state(display_state(j)),
                          f"{j.params.get('source')} → {j.params.get('target')}",
                          time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created)),
                          (job_error(j) or "")[:60])
        out_console.print(table)

    _guard(run)


@cli.command()
@CONFIG_OPTION
@click.argument("job_id", metavar="JOB")
@JSON_OPTION
def show(config_path: str, job_id: str, as_json: bool) -> None:
    """Show JOB: its steps with timings, source impact, coordinates, outstanding undo.

    Of a running job: the step under way and how much of the copy is done.

    \b
    Example:
      hotcopy show --config shard1.toml 20261201-102733-1602
      hotcopy show --config shard1.toml 20261201-102733-1602 --json | jq .source_lock_ms
    """
    from hotcopy.workflows.report import job_report

    def run() -> None:
        _, journal = _open(config_path)
        report = job_report(journal, job_id)
        if as_json:
            click.echo(json.dumps(report, indent=2, default=str))
        else:
            _render_report(report)

    _guard(run)


@cli.command()
@CONFIG_OPTION
@JSON_OPTION
def locks(config_path: str, as_json: bool) -> None:
    """List who holds which lock: job, controller host and pid, since, lease left.

    \b
    Example:
      hotcopy locks --config shard1.toml --json
    """

    def run() -> None:
        _, journal = _open(config_path)
        try:
            rows = journal.locks()
        finally:
            journal.close()
        if as_json:
            click.echo(json.dumps([{"resource": r.resource, "job": r.job_id,
                                    "job_state": r.job_state, "host": r.host, "pid": r.pid,
                                    "since": r.since, "lease_remaining_s": r.lease_remaining_s}
                                   for r in rows], indent=2))
            return
        table = Table("resource", "job", "state", "controller", "since", "lease left")
        for r in rows:
            lease = ("-" if r.lease_remaining_s is None else
                     "expired" if r.lease_remaining_s < 0 else f"{r.lease_remaining_s:.0f} s")
            table.add_row(r.resource, r.job_id, _state(r.job_state or "gone"),
                          f"{r.host or '?'} pid {r.pid or '?'}",
                          time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.since)), lease)
        out_console.print(table)

    _guard(run)




@cli.command()
@CONFIG_OPTION
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@JSON_OPTION
def cleanup(config_path: str, dry_run: bool, as_json: bool) -> None:
    """Remove what committed clones left behind (e.g. an old datadir after a crash).

    \b
    Exit codes: 0 nothing left (or, with --dry-run, listed), 3 something could not be
    removed (the message says what and why).

    \b
    Example:
      hotcopy cleanup --config shard1.toml --dry-run
    """
    from hotcopy.workflows import cleanup as workflow

    def run() -> None:
        config, journal = _open(config_path)
        runtime = Runtime(config)
        try:
            items = workflow.run(runtime, journal, dry_run=dry_run)
        finally:
            runtime.close()
        failed = [item for item in items if item.error]
        if as_json:
            click.echo(json.dumps({"dry_run": dry_run, "leftovers": [vars(i) for i in items]},
                                  indent=2))
        elif not items:
            out_console.print("nothing left behind by committed jobs")
        for item in [] if as_json else items:
            verdict = ("would remove" if dry_run else
                       f"[red]failed[/]: {escape(item.error)}" if item.error else "removed")
            out_console.print(f"{item.job} {item.server} {item.kind} {escape(item.what)}: "
                              f"{verdict}")
        sys.exit(int(ExitCode.ROLLBACK_INCOMPLETE) if failed else 0)

    _guard(run)



def _workflow_for(journal: Journal, job_id: str, default: Any) -> Any:
    """The workflow module that runs a job of this kind (clone unless it is a promotion)."""
    from hotcopy.workflows import promotion_jobs

    return promotion_jobs.module_for(journal.get_job(job_id).kind) or default
