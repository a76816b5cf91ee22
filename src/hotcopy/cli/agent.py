"""The agent's commands: run, status, pause, resume, reseed."""

from __future__ import annotations

import json
import logging
import time
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
    out_console,
)
from hotcopy.progress import human_bytes

log = logging.getLogger(__name__)


# -- hotcopy agent ---------------------------------------------------------------------


@cli.group()
def agent() -> None:
    """The long-running agent: re-seeds broken replicas by itself, within rails.

    \b
    Only a broken replica is re-seeded (SQL thread stopped on an error past the grace
    period, relay log lost, or marked with `agent reseed`), from the healthiest donor;
    never for lag, never while the master is down. See `agent status` for why.

    \b
    Example:
      hotcopy agent status --config shard1.toml
    """


@agent.command("run")
@CONFIG_OPTION
@click.option("--observe-only", is_flag=True, help="Decide and report; change no host.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Prometheus endpoint port (default: [agent] metrics_port; 0: none).")
def agent_run(config_path: str, observe_only: bool, metrics_port: int | None) -> None:
    """Poll the shard and act as leader; runs until SIGTERM (logs are JSON lines).

    \b
    Example:
      hotcopy agent run --config shard1.toml --observe-only
    """
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
    """The leader, every agent, each replica's health, the job, decisions, flap windows.

    \b
    Example:
      hotcopy agent status --config shard1.toml --json
    """
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
    """Fleet-wide: no agent starts a re-seed until `agent resume` (survives restarts).

    \b
    Example:
      hotcopy agent pause --config shard1.toml --reason "maintenance window"
    """
    from hotcopy.agent import service

    _guard(lambda: click.echo(json.dumps(service.set_pause(
        config_module.load(config_path), True, reason), default=str)))


@agent.command("resume")
@CONFIG_OPTION
def agent_resume(config_path: str) -> None:
    """Lift the fleet-wide pause.

    \b
    Example:
      hotcopy agent resume --config shard1.toml
    """
    from hotcopy.agent import service

    _guard(lambda: click.echo(json.dumps(service.set_pause(
        config_module.load(config_path), False, ""), default=str)))


@agent.command("reseed")
@CONFIG_OPTION
@click.argument("name")
@click.option("--reason", default="marked by an operator", show_default=True)
def agent_reseed(config_path: str, name: str, reason: str) -> None:
    """Mark NAME broken: the leader re-seeds it (the pause and one-job rails still hold).

    \b
    Example:
      hotcopy agent reseed --config shard1.toml db3 --reason "corrupt table"
    """
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
    for record in report.get("failovers", []):
        out_console.print(f"automatic failover {record['started_utc']}: master "
                          f"{escape(record['master'])} -> "
                          f"{escape(str(record['promoted'] or record['candidate']))}, job "
                          f"{record['job']} {record['outcome']}")
    if report.get("failover_window"):
        out_console.print(f"failover flap window: {escape(report['failover_window']['reason'])}")
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
                             else "")
                          + (f" to {escape(decision['candidate'])}" if decision.get("candidate")
                             else "") + ": " + escape("; ".join(decision["reasons"])))
