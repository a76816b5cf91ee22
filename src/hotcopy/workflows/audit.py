"""``hotcopy audit``: which servers of the shard are crash-safe, and the fix for each.

Exit codes (interface contract): 0 every audited server is fine (no critical or
warning finding left, nothing stopped on an error, every server reachable); 1 problems
found (after --fix: problems left, including fixes that need a restart and the config
lines for them); 2 bad input (unknown server name, invalid config), nothing changed.

``audit_after_clone`` is what every clone ends with: the new replica gets the online
fixes that concern its position (where it is stored, how a restart finds it), and the
audit of it goes into the job report.
"""

from __future__ import annotations

import logging
from typing import Any

from rich.markup import escape

from hotcopy.errors import ExitCode, HotcopyError
from hotcopy.mysql.audit import POSITION_CHECKS, ServerAudit, audit_server
from hotcopy.mysql.flavor import ReplicaStatus
from hotcopy.mysql.server import Server
from hotcopy.runtime import Runtime

log = logging.getLogger(__name__)

_COLOURS = {"critical": "bold red", "warning": "yellow", "info": "dim", "ok": "green"}


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


def run(runtime: Runtime, names: list[str], *, fix: bool) -> dict[str, Any]:
    """Audit NAMEs (default: every configured server); unknown names are refused first."""
    chosen = list(dict.fromkeys(names)) or list(runtime.config.servers)
    for name in chosen:
        runtime.config.server(name)  # RefusedError (exit 2) before anything is touched
    audits = [audit_one(runtime, name, fix=fix) for name in chosen]
    problems = sum(len(a.problems) for a in audits)  # a diagnosis comes with its finding
    code = ExitCode.OK if problems == 0 else ExitCode.FAILED_ROLLED_BACK
    return {"servers": [a.as_dict() for a in audits], "problems": problems,
            "crash_safe": {a.server: a.crash_safe for a in audits}, "fix": fix,
            "exit_code": int(code)}


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
    report["findings"] = [f for f in report["findings"] if f["state"] != "ok"]
    return report


def render(report: dict[str, Any]) -> list[str]:
    """Rich-markup lines for the terminal: problems with why and fix, then a summary."""
    lines: list[str] = []
    for server in report["servers"]:
        verdict = ("[green]crash-safe[/]" if server["crash_safe"]
                   else "[bold red]NOT crash-safe[/]")
        about = (f"{server['flavor']} {escape(server['version'])}, {server['role']}"
                 if server["flavor"] else server["role"])
        lines.append(f"[bold]{escape(server['server'])}[/] ({about}): {verdict}, "
                     f"{server['problems']} problem(s)")
        for applied in server.get("fixes_applied", []):
            outcome = ("[green]fixed[/]" if applied["state"] == "fixed"
                       else f"[red]fix failed: {escape(applied.get('fix_error', ''))}[/]")
            lines.append(f"  {outcome}: {escape(applied['message'])}")
        for finding in server["findings"]:
            if finding["state"] == "ok" and finding["severity"] == "ok":
                continue
            lines += _finding_lines(finding)
        for diagnosis in server["diagnoses"]:
            lines += _diagnosis_lines(diagnosis)
        checked = sum(1 for f in server["findings"] if f["severity"] == "ok")
        lines.append(f"  [dim]{checked} check(s) passed[/]")
    total = report["problems"]
    online = sum(1 for server in report["servers"] for f in server["findings"]
                 if f["state"] == "problem" and f["fix"] and f["fix"]["online"])
    hint = f"; {online} can be fixed online: hotcopy audit --fix" if online else ""
    lines.append("[green]no problems found[/]" if total == 0 else
                 f"[bold]{total} problem(s)[/]{hint}")
    return lines


def _finding_lines(finding: dict[str, Any]) -> list[str]:
    colour = _COLOURS.get(finding["severity"], "white")
    lines = [f"  [{colour}]{finding['severity']}[/] {finding['check']}: "
             f"{escape(finding['message'])}"]
    if finding["why"] and finding["state"] != "ok":
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
