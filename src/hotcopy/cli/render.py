"""Rendering of plans and job reports, for people (rich) and scripts (JSON)."""

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
    _fail,
    err_console,
    out_console,
)
from hotcopy.errors import ExitCode, HotcopyError
from hotcopy.progress import (
    human_bytes,
    human_duration,
)

log = logging.getLogger(__name__)

#: Preflight findings that say how the clone will run; the plan shows them.
PLAN_CHOICES = ("transfer.method", "clone.delta")


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
    for finding in plan["findings"]:  # the choices the clone will make, and why
        if finding["severity"] == "info" and finding.get("check") in PLAN_CHOICES:
            out_console.print(escape(finding["message"]))
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

    out_console.print(f"total: {seconds(report.get('total_s'))}")
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
    """What the clone cost beyond the source: time to a caught-up replica, verification
    apart, how warm the target starts, what the pre-flush did."""
    def ms(value: Any) -> str:
        return "n/a" if value is None else human_duration(float(value) / 1000)

    if report.get("time_to_caught_up_ms") is not None or report.get("target_downtime_ms"):
        out_console.print(f"target downtime: {ms(report.get('target_downtime_ms'))} (mysqld "
                          f"stopped until it answered)   caught up after: "
                          f"{ms(report.get('time_to_caught_up_ms'))} (from the start)   "
                          f"verify: {ms(report.get('verify_ms'))}")
    if report.get("buffer_pool_dump") is not None:
        loaded = report.get("buffer_pool_loaded")
        out_console.print("warm target: " + escape(
            f"buffer pool list {report['buffer_pool_dump']}; "
            + ("loaded" if loaded else f"not loaded ({report.get('buffer_pool_load_status')})")))
    pacing = report.get("pacing")
    if pacing:
        rate = pacing.get("rate_bytes_s")
        cost = report.get("pacing_cost_s")
        out_console.print("latency throttle: " + escape(
            f"source p90 limit {pacing['limit_ms']:.2f} ms ({pacing['factor']:g} x baseline "
            f"{pacing['baseline_p90_ms']:.2f} ms); "
            + ("unpaced" if rate is None else f"paced to {human_bytes(rate)}/s")
            + (f" at {pacing['latency_p90_ms']:.2f} ms" if pacing.get("latency_p90_ms")
               is not None else "")
            + f"; {pacing['decreases']} slow-downs, {pacing['increases']} speed-ups"
            + ("" if cost is None else f"; cost ~{human_duration(float(cost))}")))
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
