"""``hotcopy audit``: which servers of the shard are crash-safe, and the fix for each.

Exit codes (interface contract): 0 every audited server is fine (no critical or
warning finding left, nothing stopped on an error, every server reachable); 1 problems
found (after --fix: problems left, including fixes that need a restart and the config
lines for them); 2 bad input (unknown server name, invalid config) or --fix not
confirmed, nothing changed; 3 attention: at least one server could not be audited
(unreachable; it gets no verdict, the others' findings are in the report).

``--fix`` never acts on what it has not shown: the servers are audited read-only
first, the plan (every statement, and whether replication is paused around it) goes
to ``confirm``, and only the confirmed fixes are applied; ``--dry-run`` stops after
the plan.

``audit_after_clone`` is what every clone ends with: the new replica gets the online
fixes that concern its position (where it is stored, how a restart finds it), and the
audit of it goes into the job report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rich.markup import escape

from hotcopy.errors import ExitCode, HotcopyError, RefusedError
from hotcopy.mysql.audit import POSITION_CHECKS, ServerAudit, audit_server
from hotcopy.mysql.audit.data import DATA_CHECKS, summary
from hotcopy.mysql.flavor import ReplicaStatus
from hotcopy.mysql.server import Server
from hotcopy.runtime import Runtime

log = logging.getLogger(__name__)

_COLOURS = {"critical": "bold red", "warning": "yellow", "info": "dim", "ok": "green"}
#: Per server and data check, the tables shown on the terminal (all are in --json).
SHOWN_TABLES = 10

Confirm = Callable[[list[dict[str, Any]]], bool]


def _master_for(runtime: Runtime, status: ReplicaStatus) -> Server:
    """The replica's master: a configured server at that address, else an ad-hoc handle."""
    for name, conf in runtime.config.servers.items():
        if conf.host == status.master_host and conf.port == status.master_port:
            return runtime.server(name)
    return runtime.server_at("master", status.master_host, status.master_port)


def audit_one(runtime: Runtime, name: str, *, fix: bool,
              only: frozenset[str] | None = None) -> ServerAudit:
    conf = runtime.config.server(name)

    def options() -> tuple[dict[str, str], str]:
        return runtime.mysqld(name).refresh_layout().options, conf.defaults_file

    def run_on_host(argv: list[str]) -> str:
        return runtime.executor(name).run(argv, timeout=120).stdout

    return audit_server(runtime.server(name), fix=fix, only=only, options=options,
                        run_on_host=run_on_host,
                        master_for=lambda status: _master_for(runtime, status))


def run(runtime: Runtime, names: list[str], *, fix: bool, dry_run: bool = False,
        confirm: Confirm | None = None) -> dict[str, Any]:
    """Audit NAMEs (default: every configured server); unknown names are refused first.

    With ``fix``: audit read-only, hand the plan to ``confirm`` (None: confirmed, the
    caller asked not to be asked), then apply exactly the planned fixes and re-check.
    A declined plan raises RefusedError (exit 2) with nothing changed.
    """
    chosen = list(dict.fromkeys(names)) or list(runtime.config.servers)
    for name in chosen:
        runtime.config.server(name)  # RefusedError (exit 2) before anything is touched
    audits = [audit_one(runtime, name, fix=False) for name in chosen]
    plan = [step for audit in audits for step in audit.fix_plan()]
    applying = fix and not dry_run and bool(plan)
    if applying:
        if confirm is not None and not confirm(plan):
            raise RefusedError("the fixes were not confirmed: nothing was changed",
                               hint="hotcopy audit --fix --dry-run lists them; --yes "
                                    "applies them without asking")
        wanted: dict[str, set[str]] = {}
        for step in plan:
            wanted.setdefault(step["server"], set()).add(step["key"])
        audits = [audit_one(runtime, a.server, fix=True, only=frozenset(wanted[a.server]))
                  if a.server in wanted else a for a in audits]
    return build_report(audits, fix=applying, dry_run=dry_run, plan=plan)


def build_report(audits: list[ServerAudit], *, fix: bool, dry_run: bool,
            plan: list[dict[str, Any]]) -> dict[str, Any]:
    unreachable = [a.server for a in audits if not a.reachable]
    problems = sum(len(a.problems) for a in audits)  # a diagnosis comes with its finding
    if unreachable:
        code = ExitCode.ROLLBACK_INCOMPLETE  # 3: attention, the audit is incomplete
    else:
        code = ExitCode.OK if problems == 0 else ExitCode.FAILED_ROLLED_BACK
    return {"servers": [a.as_dict() for a in audits], "problems": problems,
            "crash_safe": {a.server: a.crash_safe if a.reachable else None for a in audits},
            "status": {a.server: a.status for a in audits}, "unreachable": unreachable,
            "fix": fix, "dry_run": dry_run, "fix_plan": plan, "exit_code": int(code)}


def audit_after_clone(runtime: Runtime, server_name: str) -> dict[str, Any]:
    """Configure the new replica crash-safe where that can be done online, and report.

    Applies the online fixes of the position checks only (position table engine, GTID
    positioning, relay_log_recovery, MySQL's repositories and commit order); durability
    settings such as sync_binlog are reported, not changed. Never raises for what it
    finds: a clone that verified its data is not failed by the audit; problems and the
    config lines still needed are in the returned report.
    """
    runtime.server(server_name).close()
    try:
        audit = audit_one(runtime, server_name, fix=True, only=POSITION_CHECKS)
    except HotcopyError as exc:
        log.warning("audit of %s after the clone failed: %s", server_name, exc.message)
        return {"server": server_name, "crash_safe": False, "error": exc.message}
    report = audit.as_dict()
    report["fixed"] = [f.check for f in audit.applied if f.state == "fixed"]
    report["config_lines_needed"] = sorted({line for f in audit.problems if f.fix
                                            for line in f.fix.config_lines})
    # The data audit travels as its summary (counts, largest tables), not per table.
    report["findings"] = [f for f in report["findings"]
                          if f["state"] != "ok" and f["check"] not in DATA_CHECKS]
    report["data"] = summary(audit.data)
    report.pop("fix_plan", None)
    return report


def render(report: dict[str, Any]) -> list[str]:
    """Rich-markup lines for the terminal: problems with why and fix, then a summary."""
    lines: list[str] = []
    for server in report["servers"]:
        if server["status"] == "unreachable":
            lines += _unreachable_lines(server)
            continue
        verdict = ("[green]crash-safe[/]" if server["crash_safe"]
                   else "[bold red]NOT crash-safe[/]")
        about = f"{server['flavor']} {escape(server['version'])}, {server['role']}"
        lines.append(f"[bold]{escape(server['server'])}[/] ({about}): {verdict}, "
                     f"{server['problems']} problem(s)")
        for applied in server.get("fixes_applied", []):
            outcome = ("[green]fixed[/]" if applied["state"] == "fixed"
                       else f"[red]fix failed: {escape(applied.get('fix_error', ''))}[/]")
            lines.append(f"  {outcome}: {escape(applied['message'])}")
        shown: dict[str, int] = {}
        for finding in server["findings"]:
            if finding["state"] == "ok" and finding["severity"] == "ok":
                continue
            if finding["check"] in DATA_CHECKS:
                shown[finding["check"]] = shown.get(finding["check"], 0) + 1
                if shown[finding["check"]] > SHOWN_TABLES:
                    continue
            # One table after another: the why is said once per check.
            lines += _finding_lines(finding, why=shown.get(finding["check"], 1) == 1)
        for check, count in sorted(shown.items()):
            if count > SHOWN_TABLES:
                lines.append(f"  [dim]... and {count - SHOWN_TABLES} more {check} "
                             "finding(s): all are in --json[/]")
        for diagnosis in server["diagnoses"]:
            lines += _diagnosis_lines(diagnosis)
        checked = sum(1 for f in server["findings"] if f["severity"] == "ok")
        lines.append(f"  [dim]{checked} check(s) passed[/]")
    if report.get("dry_run"):
        lines += (render_plan(report["fix_plan"]) if report["fix_plan"]
                  else ["--fix would change nothing: no problem has an online fix"])
    total = report["problems"]
    online = 0 if report["fix"] or report.get("dry_run") else len(report["fix_plan"])
    hint = (f"; {online} can be fixed online: hotcopy audit --fix (it asks first; "
            "--fix --dry-run lists the statements)") if online else ""
    lines.append("[green]no problems found[/]" if total == 0 else
                 f"[bold]{total} problem(s)[/]{hint}")
    if report["unreachable"]:
        lines.append(f"[bold yellow]not audited (unreachable): "
                     f"{escape(', '.join(report['unreachable']))}[/]")
    return lines


def _unreachable_lines(server: dict[str, Any]) -> list[str]:
    error = server.get("error") or {}
    lines = [f"[bold]{escape(server['server'])}[/]: [bold yellow]UNREACHABLE[/], not audited "
             f"(no verdict): {escape(error.get('message', ''))}"]
    if error.get("hint"):
        lines.append(f"    [dim]{escape(error['hint'])}[/]")
    return lines


def render_plan(plan: list[dict[str, Any]]) -> list[str]:
    """What --fix would do, statement by statement, with what it pauses (or not)."""
    lines = [f"[bold]--fix would apply {len(plan)} fix(es):[/]"]
    for step in plan:
        pause = {"sql": "the SQL thread is stopped around it, then started again",
                 "all": "replication (IO and SQL) is stopped around it, then started again",
                 }.get(step.get("stop_replication", ""), "replication keeps running")
        binlog = "; not binlogged (sql_log_bin=0)" if step.get("no_binlog") else ""
        lines.append(f"  {escape(step['server'])}: {escape(step['message'])}")
        for statement in step.get("sql", []):
            lines.append(f"    {escape(statement)};")
        lines.append(f"    [dim]{pause}{binlog}[/]")
    return lines


def _finding_lines(finding: dict[str, Any], *, why: bool = True) -> list[str]:
    colour = _COLOURS.get(finding["severity"], "white")
    lines = [f"  [{colour}]{finding['severity']}[/] {finding['check']}: "
             f"{escape(finding['message'])}"]
    if why and finding["why"] and finding["state"] != "ok":
        lines.append(f"    [dim]why: {escape(finding['why'])}[/]")
    fix = finding.get("fix")
    if fix and finding["state"] != "ok":
        how = "online (--fix)" if fix["online"] else (
            "restart needed" if fix["restart"] else "by hand")
        for statement in fix["sql"]:
            lines.append(f"    fix ({how}): {escape(statement)};")
        for line in fix["config_lines"]:
            lines.append(f"    config, under \\[mysqld]: {escape(line)}")
        if fix["note"]:
            lines.append(f"    [dim]{escape(fix['note'])}[/]")
    return lines


def _diagnosis_lines(diagnosis: dict[str, Any]) -> list[str]:
    lines = [f"  [bold]diagnosis[/] of error {diagnosis['errno']}"
             f"{' at ' + diagnosis['gtid'] if diagnosis.get('gtid') else ''}"
             f"{' on ' + diagnosis['table'] if diagnosis.get('table') else ''}: "
             f"[bold]{diagnosis['verdict']}[/]",
             f"    {escape(diagnosis['explanation'])}"]
    if diagnosis.get("reason"):
        lines.append(f"    [dim]{escape(diagnosis['reason'])}[/]")
    for row in diagnosis.get("rows", [])[:5]:
        differing = row.get("differing_columns")
        lines.append(f"    row {escape(str(row.get('key')))}: {row['state']}"
                     + (f" (differs in {', '.join(differing)})" if differing else ""))
    for step in diagnosis["what_to_do"]:
        lines.append(f"    - {escape(step)}")
    return lines
