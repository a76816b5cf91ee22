"""Commands on servers: audit, check, the sandbox and the demo."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from hotcopy import config as config_module
from hotcopy.cli.base import (
    CONFIG_OPTION,
    JSON_OPTION,
    _guard,
    cli,
    err_console,
    out_console,
)
from hotcopy.errors import RefusedError
from hotcopy.runtime import Runtime

log = logging.getLogger(__name__)


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
