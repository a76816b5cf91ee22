"""The command line: parse, call a workflow, render. No logic lives here."""

from __future__ import annotations

import atexit
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hotcopy import config as config_module
from hotcopy.errors import ExitCode, HotcopyError, RefusedError
from hotcopy.progress import (
    ConsoleReporter,
    NullReporter,
    PlainReporter,
    Reporter,
    human_bytes,
    human_duration,
)
from hotcopy.runtime import Runtime
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
    """List who holds which lock: job, controller host and pid, since, lease left."""

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
@click.argument("names", nargs=-1, metavar="[NAME ...]")
@click.option("--fix", is_flag=True,
              help="Apply the safe online fixes (ALTER ... ENGINE=InnoDB, SET GLOBAL/PERSIST, "
                   "GTID positioning), then audit again; lists them and asks first; never "
                   "skips a replication event.")
@click.option("--dry-run", is_flag=True,
              help="List what --fix would do (every statement, what it pauses); change "
                   "nothing.")
@click.option("--yes", "-y", is_flag=True,
              help="With --fix: do not ask (needed without a terminal).")
@JSON_OPTION
def audit(config_path: str, names: tuple[str, ...], fix: bool, dry_run: bool, yes: bool,
          as_json: bool) -> None:
    """Check that replicas are crash-safe: severity, why it matters, the exact fix.

    \b
    Audits every server of the config, or the NAMEs given: where the replication
    position lives, durability settings, tables without a primary key, tables in
    non-transactional engines. Exit codes: 0 no problem, 1 problems found (or left
    after --fix; fixes that need a restart are listed with their config lines),
    2 bad input (unknown name, invalid config) or --fix not confirmed (nothing
    changed), 3 a server could not be audited (unreachable; no verdict for it).

    \b
    Example:
      hotcopy audit --config shard1.toml
      hotcopy audit --config shard1.toml db3 --fix --dry-run
      hotcopy audit --config shard1.toml db3 --fix
    """
    from hotcopy.workflows import audit as workflow

    def confirm(plan: list[dict[str, Any]]) -> bool:
        if not sys.stdin.isatty():
            raise RefusedError("refusing to change servers without confirmation: nothing "
                               "was changed", hint="add --yes, or --dry-run to list the "
                                                   "fixes")
        for line in workflow.render_plan(plan):
            err_console.print(line)
        return click.confirm("Apply these fixes?", err=True)

    def run() -> None:
        runtime = Runtime(config_module.load(config_path))
        try:
            report = workflow.run(runtime, list(names), fix=fix, dry_run=dry_run,
                                  confirm=None if yes else confirm)
        finally:
            runtime.close()
        if as_json:
            click.echo(json.dumps(report, indent=2, default=str))
        else:
            for line in workflow.render(report):
                out_console.print(line)
        sys.exit(report["exit_code"])

    _guard(run)


@cli.group()
def sandbox() -> None:
    """A real local shard (MariaDB master + 2 replicas on btrfs) for trying hotcopy.

    \b
    Example:
      hotcopy sandbox up --dir /var/tmp/shard && hotcopy sandbox status --dir /var/tmp/shard
    """


@sandbox.command("up")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False))
@click.option("--replicas", default=2, show_default=True, type=click.IntRange(1, 8))
@click.option("--fs", "filesystem", default="btrfs", show_default=True,
              type=click.Choice(["btrfs", "zfs", "plain"]),
              help="What the datadirs live on; 'plain' cannot be snapshotted (to see the "
                   "refusal).")
@click.option("--topology", default="local", show_default=True,
              type=click.Choice(["local", "netns"]),
              help="'local': every server on loopback here; 'netns': every server a host "
                   "of its own (network namespace, 198.18.x address, sshd), reached over ssh.")
def sandbox_up(directory: str, replicas: int, filesystem: str, topology: str) -> None:
    """Create and start the shard in DIR; writes DIR/hotcopy.toml.

    \b
    Example:
      hotcopy sandbox up --dir /var/tmp/shard --replicas 3
      hotcopy sandbox up --dir /var/tmp/hosts --topology netns
    """
    from hotcopy import sandbox as sb

    def run() -> None:
        info = sb.up(Path(directory), replicas=replicas, filesystem=filesystem,
                     topology=topology)
        state = "was already up" if info.already_up else "is up"
        err_console.print(f"sandbox {state}: {', '.join(info.servers)}; "
                          f"config: {info.config_path}")

    _guard(run)


@sandbox.command("down")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False))
def sandbox_down(directory: str) -> None:
    """Stop the shard in DIR and remove its mounts, loop devices and files.

    \b
    Example:
      hotcopy sandbox down --dir /var/tmp/shard
    """
    from hotcopy import sandbox as sb

    _guard(lambda: sb.down(Path(directory)))


@sandbox.command("status")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False))
@JSON_OPTION
def sandbox_status(directory: str, as_json: bool) -> None:
    """Show the servers of the shard in DIR and their replication.

    \b
    Example:
      hotcopy sandbox status --dir /var/tmp/shard --json
    """
    from hotcopy import sandbox as sb

    def run() -> None:
        rows = sb.status(Path(directory))
        if as_json:
            click.echo(json.dumps(rows, indent=2, default=str))
            return
        table = Table(*(rows[0].keys() if rows else ["name"]))
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        out_console.print(table)

    _guard(run)


@cli.command()
@click.option("--dir", "directory", default="/var/tmp/hotcopy-demo",  # noqa: S108
              show_default=True,
              type=click.Path(file_okay=False), help="Where the sandbox shard lives.")
@click.option("--keep/--no-keep", default=True, show_default=True,
              help="Leave the sandbox running afterwards, to explore it.")
def demo(directory: str, keep: bool) -> None:
    """Sandbox shard, write load, clone replica2 from replica1, and the proof.

    \b
    Example:
      hotcopy demo --dir /var/tmp/hotcopy-demo --no-keep
    """
    from hotcopy import demo as demo_module

    _guard(lambda: sys.exit(demo_module.run(Path(directory), keep=keep, console=err_console)))


@cli.command()
@CONFIG_OPTION
@JSON_OPTION
def check(config_path: str, as_json: bool) -> None:
    """Is this shard ready for a clone? Every server, as it is now; exit 2 on any problem.

    \b
    Per server: ssh login and host key, the tools the transfer method needs, the admin
    account's privileges against the minimal set (with the GRANT that adds what is
    missing), the snapshot backend of its datadir; then the replication account, the
    transfer ports between the replicas (a listener of its own, a few seconds), and
    whether the journal can be written.

    \b
    Example:
      hotcopy check --config shard1.toml
      hotcopy check --config shard1.toml --json | jq '.rows[] | select(.status != "ok")'
    """
    from hotcopy.workflows import check as workflow

    def run() -> None:
        config = config_module.load(config_path)
        runtime = Runtime(config)
        try:
            report = workflow.run(runtime, config.journal_path())
        finally:
            runtime.close()
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            table = Table("server", "check", "status", "detail")
            colour = {"ok": "green", "problem": "bold red", "warning": "yellow"}
            for row in report["rows"]:
                table.add_row(row["server"], row["check"],
                              f"[{colour[row['status']]}]{row['status']}[/]",
                              escape(row["detail"]))
            out_console.print(table)
            for line in workflow.render(report):
                out_console.print(f"[bold]fix:[/] {escape(line)}")
            verdict = (f"[bold red]{report['problems']} problem(s)[/]" if report["problems"]
                       else "[green]ready: no problems found[/]")
            out_console.print(verdict)
        sys.exit(report["exit_code"])

    _guard(run)


def _state(state: str) -> str:
    colour = {"committed": "green", "rolled-back": "yellow", "failed": "yellow",
              "rollback-incomplete": "bold red", "running": "cyan"}.get(state, "white")
    return f"[{colour}]{state}[/]"


def _render_plan(plan: dict[str, Any], steps: list[Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"plan": [{"step": s.name, "does": s.title} for s in steps],
                               **plan}, indent=2, default=str))
        return
    # The plan is the command's output (stdout, to keep or diff); problems go to stderr.
    table = Table("#", "step", "what it does", title="plan")
    for i, step in enumerate(steps, 1):
        table.add_row(str(i), step.name, step.title)
    out_console.print(table)
    facts = plan["facts"]
    if "ship_bytes" in facts:
        how = (f"snapshot: {facts['snapshot_backend']}" if facts.get("snapshot_backend")
               else f"pipeline: {facts.get('pipeline', 'snapshot')} (no snapshot)")
        method = f"; transfer: {facts['transfer_method']}" if facts.get("transfer_method") else ""
        out_console.print(f"to ship: {human_bytes(facts['ship_bytes'])} in {facts['ship_files']} "
                          f"files; {how}{method}; target free: "
                          f"{human_bytes(facts.get('target_free_bytes', 0))}")
    problems = [f for f in plan["findings"] if f["severity"] in ("error", "warning")]
    for finding in problems:
        colour = {"error": "red", "warning": "yellow"}[finding["severity"]]
        hint = f" [dim](hint: {escape(finding['hint'])})[/]" if finding.get("hint") else ""
        err_console.print(f"[{colour}]{finding['severity']}[/]: {escape(finding['message'])}{hint}")
    if not problems:
        out_console.print("[green]preflight: no problems found[/]")


def _render_report(report: dict[str, Any]) -> None:
    out_console.print(f"job [bold]{report['job']}[/] ({report['kind']} {report['source']} → "
                      f"{report['target']}): {_state(report['state'])}")
    table = Table("step", "outcome", "took", "detail")
    for step in report["steps"]:
        took = "running" if step["ms"] is None else human_duration(step["ms"] / 1000)
        table.add_row(step["name"], step["outcome"] or "", took,
                      escape((step["error"] or step["detail"] or "")[:90]))
    out_console.print(table)
    live = report.get("live")
    if live:
        done, expected = live.get("bytes_done"), live.get("bytes_expected")
        copied = ""
        if done is not None:
            copied = f"; {human_bytes(done)}" + (
                f" of {human_bytes(expected)} ({done / expected:.0%})" if expected else "")
            copied += " copied, as of " + time.strftime(
                "%H:%M:%S", time.localtime(live["progress_at"]))
        out_console.print(f"running: step {live['step']} since "
                          f"{time.strftime('%H:%M:%S', time.localtime(live['since']))}{copied}")
    _render_impact(report)
    if report.get("error") and report["state"] != "committed":
        out_console.print(f"[yellow]error:[/] {escape(str(report['error']))}")
    if report["outstanding_undo"]:
        out_console.print("[bold red]outstanding undo (run `hotcopy rollback "
                          f"{report['job']}`):[/]")
        for entry in report["outstanding_undo"]:
            line = f"  - {entry['label']} [{entry['state']}] {entry['error'] or ''}"
            out_console.print(escape(line))


def _render_impact(report: dict[str, Any]) -> None:
    def ms(value: Any) -> str:
        return "n/a" if value is None else human_duration(float(value) / 1000)

    def seconds(value: Any) -> str:
        return "n/a" if value is None else human_duration(float(value))

    out_console.print(f"total: {seconds(report.get('total_s'))}   target down: "
                      f"{seconds(report.get('target_downtime_s'))} (mysqld stopped until "
                      "caught up)")
    out_console.print(f"source write lock: {ms(report['source_lock_ms'])}   "
                      f"source replication paused: {ms(report['source_replication_paused_ms'])}"
                      f"   paused again for verify: {ms(report.get('verify_source_paused_ms'))}")
    if report["bytes_transferred"] is not None:
        method = report.get("transfer_method")
        out_console.print(f"transferred: {human_bytes(report['bytes_transferred'])}"
                          + (f" with {method}" if method else ""))
    _render_costs(report)
    coords = report.get("coordinates")
    if coords:
        out_console.print(f"position: {coords['gtid_variable']}={coords['gtid']} "
                          f"({coords['master_log_file']}:{coords['master_log_pos']} on "
                          f"{coords['master_host']}:{coords['master_port']})")


def _render_costs(report: dict[str, Any]) -> None:
    """Issue 13's figures: target downtime, time to caught up, verify, warm, pre-flush."""
    def ms(value: Any) -> str:
        return "n/a" if value is None else f"{value:.0f} ms"

    if report.get("time_to_caught_up_ms") is not None or report.get("target_downtime_ms"):
        out_console.print(f"target downtime: {ms(report.get('target_downtime_ms'))}   "
                          f"caught up after: {ms(report.get('time_to_caught_up_ms'))}   "
                          f"verify: {ms(report.get('verify_ms'))}")
    if report.get("buffer_pool_dump") is not None:
        loaded = report.get("buffer_pool_loaded")
        out_console.print("warm target: " + escape(
            f"buffer pool list {report['buffer_pool_dump']}; "
            + ("loaded" if loaded else f"not loaded ({report.get('buffer_pool_load_status')})")))
    if report.get("preflush_outcome") is not None:
        out_console.print("pre-flush: " + escape(
            f"dirty pages {report.get('dirty_pages_before')} → "
            f"{report.get('dirty_pages_after')} ({report['preflush_outcome']}: "
            f"{report.get('preflush_reason')})"))


def _finish(report: dict[str, Any], code: ExitCode, error: HotcopyError | None,
            as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**report, "exit_code": int(code)}, indent=2, default=str))
        if error is not None:
            err_console.print(f"[bold red]{report['job']}: {escape(str(error))}[/]")
    elif code == ExitCode.REFUSED and error is not None:
        _fail(error)
    else:
        _render_report(report)
        if error is not None:
            err_console.print(f"[bold red]{report['job']}: {escape(error.message)}[/]")
            if code == ExitCode.FAILED_ROLLED_BACK:
                err_console.print("[yellow]everything this job changed was undone[/]")
            elif code == ExitCode.ROLLBACK_INCOMPLETE:
                err_console.print(f"[bold red]rollback incomplete: fix the causes above, then "
                                  f"`hotcopy rollback {report['job']}`[/]")
    sys.exit(int(code))


@cli.command()
@CONFIG_OPTION
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@JSON_OPTION
def cleanup(config_path: str, dry_run: bool, as_json: bool) -> None:
    """Remove what committed clones left behind (e.g. an old datadir after a crash).

    \b
    Exit codes: 0 nothing left (or, with --dry-run, listed), 3 something could not be
    removed (the message says what and why).
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


def main() -> None:
    cli(prog_name="hotcopy")


# -- switchover, failover, rejoin, topology (issue 12) ---------------------------------


@cli.command()
@CONFIG_OPTION
@JSON_OPTION
def topology(config_path: str, as_json: bool) -> None:
    """The shard as it is: who replicates from whom, GTID positions per domain, lag,
    read_only, errant transactions, crash-safety. Read-only; exit 1 if problems found."""
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


def _workflow_for(journal: Journal, job_id: str, default: Any) -> Any:
    """The workflow module that runs a job of this kind (clone unless it is a promotion)."""
    from hotcopy.workflows import promotion_jobs

    return promotion_jobs.module_for(journal.get_job(job_id).kind) or default


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
    """
    from hotcopy.workflows import rejoin as workflow
    from hotcopy.workflows.report import job_report

    def run() -> None:
        config, journal = _open(config_path, writes=True)
        reporter: Reporter = NullReporter() if as_json else ConsoleReporter(err_console)
        outcome = workflow.start(Runtime(config), journal, name, reporter)
        _finish_promotion(job_report(journal, outcome.job.id), outcome, as_json)

    _guard(run)


# -- hotcopy agent ---------------------------------------------------------------------


@cli.group()
def agent() -> None:
    """The long-running agent: re-seeds broken replicas by itself, within rails.

    \b
    Only a broken replica is re-seeded (SQL thread stopped on an error past the grace
    period, relay log lost, or marked with `agent reseed`), from the healthiest donor;
    never for lag, never while the master is down. See `agent status` for why.
    """


@agent.command("run")
@CONFIG_OPTION
@click.option("--observe-only", is_flag=True, help="Decide and report; change no host.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Prometheus endpoint port (default: [agent] metrics_port; 0: none).")
def agent_run(config_path: str, observe_only: bool, metrics_port: int | None) -> None:
    """Poll the shard and act as leader; runs until SIGTERM (logs are JSON lines)."""
    from hotcopy.agent import jsonlog, service

    def run() -> None:
        config = config_module.load(config_path)
        jsonlog.install(min(logging.getLogger().level, logging.INFO), shard=config.shard.name)
        service.run(config, observe_only=observe_only, metrics_port=metrics_port)

    _guard(run)


@agent.command("status")
@CONFIG_OPTION
@JSON_OPTION
def agent_status(config_path: str, as_json: bool) -> None:
    """The leader, every agent, each replica's health, the job, decisions, flap windows."""
    from hotcopy.agent import service

    def run() -> None:
        report = service.show(config_module.load(config_path))
        if as_json:
            click.echo(json.dumps(report, indent=2, default=str))
            return
        _render_agent_status(report)

    _guard(run)


@agent.command("pause")
@CONFIG_OPTION
@click.option("--reason", default="paused by an operator", show_default=True)
def agent_pause(config_path: str, reason: str) -> None:
    """Fleet-wide: no agent starts a re-seed until `agent resume` (survives restarts)."""
    from hotcopy.agent import service

    _guard(lambda: click.echo(json.dumps(service.set_pause(
        config_module.load(config_path), True, reason), default=str)))


@agent.command("resume")
@CONFIG_OPTION
def agent_resume(config_path: str) -> None:
    """Lift the fleet-wide pause."""
    from hotcopy.agent import service

    _guard(lambda: click.echo(json.dumps(service.set_pause(
        config_module.load(config_path), False, ""), default=str)))


@agent.command("reseed")
@CONFIG_OPTION
@click.argument("name")
@click.option("--reason", default="marked by an operator", show_default=True)
def agent_reseed(config_path: str, name: str, reason: str) -> None:
    """Mark NAME broken: the leader re-seeds it (the pause and one-job rails still hold)."""
    from hotcopy.agent import service

    _guard(lambda: click.echo(json.dumps(service.mark(config_module.load(config_path), name,
                                                      reason), default=str)))


def _render_agent_status(report: dict[str, Any]) -> None:
    leader = report["leader"]
    out_console.print(f"shard [bold]{escape(report['shard'])}[/]  leader: "
                      f"{escape(leader['id']) if leader else '[red]none[/]'}"
                      + ("  [bold yellow]PAUSED[/]" if report["paused"] else ""))
    if report["paused"]:
        out_console.print(f"  {escape(report['pause']['text'])}")
    if report.get("master_up") is False:
        out_console.print(f"[bold red]master {escape(str(report['master'] or '(unknown)'))} "
                          "is down:[/] "
                          + escape("; ".join(report["master_reasons"])))
    table = Table("replica", "health", "lag", "why")
    for name, replica in sorted(report["replicas"].items()):
        table.add_row(escape(name), replica["state"], str(replica.get("lag_s")),
                      escape("; ".join(replica["reasons"])))
    out_console.print(table)
    for window in report["flap_windows"]:
        out_console.print(f"flap window: {escape(window['replica'])} not re-seeded again until "
                          f"{window['until_utc']}")
    for job in report["jobs"]:
        done, expected = job.get("bytes_done"), job.get("bytes_expected")
        copied = "" if done is None else f"; {human_bytes(done)}" + (
            f" of {human_bytes(expected)} ({done / expected:.0%})" if expected else "") + " copied"
        out_console.print(f"job {job['job']} {job['state']} {job['source']} -> {job['target']}"
                          f" at step {job['step']} ({job['step_outcome']}){copied}")
    for decision in report["decisions"][:10]:
        stamp = time.strftime("%H:%M:%S", time.gmtime(decision["at"]))
        out_console.print(f"{stamp} {decision['action']} {escape(decision['target'] or '-')}"
                          + (f" from {escape(decision['donor'])}" if decision.get("donor")
                             else "") + ": " + escape("; ".join(decision["reasons"])))
