"""Read-only checks before a clone, and the facts the later steps rely on.

Nothing here changes any host: every problem is reported as a finding, and any
finding of severity "error" stops the clone with exit code 2 before the first change.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

from hotcopy import remote, space
from hotcopy.errors import HotcopyError, MySQLError, RefusedError
from hotcopy.hosts import Executor
from hotcopy.hosts.ssh import SudoRefused
from hotcopy.mysql import backup_tool, replication
from hotcopy.mysql.flavor import ReplicaStatus
from hotcopy.mysql.mysqld import read_layout
from hotcopy.mysql.server import Server
from hotcopy.progress import human_bytes
from hotcopy.runtime import Runtime
from hotcopy.saga import Job, Journal
from hotcopy.snapshot.base import backend_for
from hotcopy.transfer.base import STATIC_EXCLUDES, file_excludes, is_excluded, log_excludes
from hotcopy.workflows import faults, preflight_layout, preflight_servers, warm

#: Steps that report progress, so a kill-during fault can fire inside them.
PROGRESS_STEPS = ("pull", "backup_stream", "commit")

log = logging.getLogger(__name__)


@dataclass
class Finding:
    severity: str  # error | warning | info
    check: str
    message: str
    hint: str | None = None


@dataclass
class Preflight:
    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def error(self, check: str, message: str, hint: str | None = None) -> None:
        self.findings.append(Finding("error", check, message, hint))

    def warn(self, check: str, message: str, hint: str | None = None) -> None:
        self.findings.append(Finding("warning", check, message, hint))

    def info(self, check: str, message: str) -> None:
        self.findings.append(Finding("info", check, message))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def as_dict(self) -> dict[str, Any]:
        return {"findings": [asdict(f) for f in self.findings], "facts": self.facts}

    def raise_if_errors(self) -> None:
        if self.errors:
            lines = [f"- {f.message}" + (f" (hint: {f.hint})" if f.hint else "")
                     for f in self.errors]
            raise RefusedError("preflight found problems; nothing was changed:\n"
                               + "\n".join(lines))


def run(runtime: Runtime, journal: Journal, source: str, target: str,
        job_id: str = "plan", transfer: str | None = None) -> Preflight:
    report = Preflight()
    config = runtime.config
    _check_faults(report)
    if source == target:
        report.error("arguments", f"source and target are the same server ({source})",
                     hint="--target names the replica to re-seed, --source another healthy "
                          "replica to copy it from")
        return report
    source_conf, target_conf = config.server(source), config.server(target)
    report.facts.update(source=source, target=target, source_address=source_conf.host,
                        target_address=target_conf.host)
    _check_locks(report, journal, source, target, job_id, os.path.abspath(config.source_path))
    if report.errors:
        return report  # a busy server is mid-change: anything else found now would mislead
    src = runtime.server(source)
    if not _reachable(report, src, "source"):
        return report
    status = _check_source_replication(report, runtime, src)
    if status is None:
        return report
    _check_master(report, runtime, status)
    _check_target_sql(report, runtime, target, status)
    if not report.errors:
        preflight_servers.check_distinct(report, runtime, source, target,
                                         report.facts["master"].get("name"), status)
    src_exec, tgt_exec = runtime.executor(source), runtime.executor(target)
    _check_sudo(report, src_exec, "source")
    _check_sudo(report, tgt_exec, "target")
    if not report.errors:  # a refused sudo would only repeat itself as "not installed"
        _check_tools(report, src_exec, "source", ["rsync", "find", "stat", "findmnt"])
        _check_tools(report, tgt_exec, "target", ["rsync", "stat", "df", "chown", "sync",
                                                  "find", "dd"])
    if report.errors:
        return report
    _check_source_files(report, runtime, src, source, job_id)
    if not report.errors:
        _check_target_files(report, runtime, target)
    from hotcopy.workflows import preflight_methods  # late: it imports this module

    preflight_methods.check(report, runtime, source, target, transfer)
    return report


def _reachable(report: Preflight, server: Server, role: str) -> bool:
    try:
        version = server.version_string
    except MySQLError as exc:
        report.error(f"{role}.connect", f"{role} {exc.message}", exc.hint)
        return False
    report.facts[f"{role}_version"] = version
    report.facts[f"{role}_flavor"] = server.flavor.name
    return True


def _check_faults(report: Preflight) -> None:
    """A rehearsal fault that can never fire would turn a rehearsal into a real clone."""
    spec = os.environ.get(faults.ENVIRONMENT_VARIABLE, "")
    if not spec.strip():
        return
    name = faults.ENVIRONMENT_VARIABLE
    try:
        parsed = faults.parse(spec)
    except RefusedError as exc:
        report.error("faults", exc.message, exc.hint)
        return
    except ValueError:
        report.error("faults", f"{name}={spec!r}: the fraction of kill-during must be a number",
                     hint="e.g. kill-during:pull:0.5")
        return
    from hotcopy.workflows.clone import PIPELINES  # late: the clone imports this module

    steps = list(dict.fromkeys(step.name for pipeline in PIPELINES.values() for step in pipeline))
    for fault in parsed:
        label = f"{fault.kind}:{fault.step}"
        if fault.step not in steps:
            report.error("faults", f"{name}: '{label}' names no step of the clone, so it "
                         "would never fire", hint="steps: " + ", ".join(steps))
        elif fault.kind == "kill-during" and (fault.step not in PROGRESS_STEPS
                                              or not 0 < fault.fraction <= 1):
            report.error("faults", f"{name}: '{label}:{fault.fraction}' would never fire",
                         hint="kill-during works in " + ", ".join(PROGRESS_STEPS)
                              + " with a fraction in (0, 1], e.g. kill-during:pull:0.5")
        else:
            report.warn("faults", f"{name} is set: this run fails on purpose ({label})")


def _check_locks(report: Preflight, journal: Journal, source: str, target: str,
                 own_job: str, config_path: str) -> None:
    for job in journal.list_jobs(limit=200):
        if job.terminal or job.kind != "clone" or job.id == own_job:
            continue
        busy = {job.params.get("source"), job.params.get("target")} & {source, target}
        if busy:
            report.error("busy", f"job {job.id} ({job.state}, {job.params.get('source')} → "
                         f"{job.params.get('target')}) is still working on "
                         f"{', '.join(sorted(str(b) for b in busy))}",
                         hint=_busy_hint(job, config_path))


def _busy_hint(job: Job, config_path: str) -> str:
    alive = _controller_alive(job)
    if alive:
        return f"wait for it, or stop pid {job.owner_pid} (SIGTERM rolls the job back)"
    finish = (f"`hotcopy rollback --config {config_path} {job.id}` undoes it, "
              f"`hotcopy resume --config {config_path} {job.id}` finishes it")
    if alive is None:
        return f"if its controller ({job.owner_host} pid {job.owner_pid}) is gone: {finish}"
    return f"its controller (pid {job.owner_pid}) is gone: {finish}"


def _controller_alive(job: Job) -> bool | None:
    """Whether the process that runs the job still exists; None when it is elsewhere."""
    if not job.owner_pid or job.owner_host != socket.gethostname():
        return None
    try:
        os.kill(job.owner_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_source_replication(report: Preflight, runtime: Runtime,
                              src: Server) -> ReplicaStatus | None:
    try:
        status = replication.single_channel(src)
    except HotcopyError as exc:
        report.error("source.replication", exc.message)
        return None
    if status is None:
        report.error("source.replica", f"source {src.name} is not a replica (no replication "
                     "configured): the source must be a healthy replica of the shard's master",
                     hint="pass one of the shard's replicas as --source")
        return None
    if not status.running:
        error = status.last_sql_error or status.last_io_error or "stopped, without an error"
        report.error("source.replication", f"replication on source {src.name} is not running "
                     f"(IO thread {status.io_running}, SQL thread {status.sql_running}): {error}",
                     hint=f"a copy of {src.name} now would seed a replica that is just as "
                          "stuck: fix and restart its replication (START SLAVE), or pass "
                          "another replica as --source")
    lag = status.seconds_behind
    limit = runtime.config.clone.max_source_lag_s
    if lag is not None and lag > limit:
        report.error("source.lag", f"source {src.name} is {lag}s behind its master "
                     f"(limit clone.max_source_lag_s = {limit})",
                     hint=f"wait until {src.name} has caught up, pass a replica closer to the "
                          f"master as --source, or raise clone.max_source_lag_s in "
                          f"{runtime.config.source_path}")
    report.facts["master"] = {"host": status.master_host, "port": status.master_port}
    report.facts["using_gtid"] = status.using_gtid
    return status


def master_name(runtime: Runtime, host: str, port: int) -> str | None:
    for name, server in runtime.config.servers.items():
        if server.host == host and server.port == port:
            return name
    return None


def _check_master(report: Preflight, runtime: Runtime, status: ReplicaStatus) -> None:
    name = master_name(runtime, status.master_host, status.master_port)
    report.facts["master"]["name"] = name
    if name is None:
        report.warn("master", f"the source's master {status.master_host}:{status.master_port} "
                    "is not among the configured servers; catch-up is judged by lag only")


def _check_target_sql(report: Preflight, runtime: Runtime, target: str,
                      status: ReplicaStatus) -> None:
    tgt_conf = runtime.config.server(target)
    if (tgt_conf.host, tgt_conf.port) == (status.master_host, status.master_port):
        report.error("target.master", f"target {target} is the shard's master (the source "
                     "replicates from it); hotcopy only re-seeds replicas",
                     hint="pass a replica as --target; a master must be demoted first")
        return
    control = runtime.mysqld(target)
    running = control.is_running()
    report.facts["target_running"] = running
    if not running:
        try:
            control.ensure_stopped_for_real()
        except RefusedError as exc:
            report.error("target.running", exc.message, exc.hint)
            return
        report.warn("target.down", f"mysqld on {target} is not running; it will be re-seeded "
                    "and started")
        _check_stopped_target_version(report, control.binary_version(), target)
        return
    tgt = runtime.server(target)
    if not _reachable(report, tgt, "target"):
        return
    children = replication.replicas_of(tgt)
    if children:
        report.error("target.replicas", f"target {target} has {len(children)} replica(s) of "
                     f"its own pulling its binlog (from {', '.join(children)}); re-seeding it "
                     "would break them",
                     hint="re-point them to another server first; a client that is already "
                          f"gone can be cut off with KILL on {target} (its thread shows as "
                          "Binlog Dump in SHOW PROCESSLIST)")
    src_version = report.facts.get("source_version", "")
    tgt_version = report.facts.get("target_version", "")
    if src_version.split(".")[:2] != tgt_version.split(".")[:2]:
        report.error("versions", f"source runs {src_version} but target runs {tgt_version}; "
                     "a datadir only moves between servers of the same major.minor version")


def _check_stopped_target_version(report: Preflight, version: str | None, target: str) -> None:
    """A stopped target has no SQL to ask: its binary says what would start the copy."""
    src_version = str(report.facts.get("source_version", ""))
    if version is None:
        report.error("versions", f"target {target} is stopped and its server binary gave no "
                     "version (`--version`): the copy might not start there",
                     hint=f"check servers.{target}.mysqld in the config")
        return
    report.facts["target_version"] = version
    if src_version.split(".")[:2] != version.split(".")[:2]:
        report.error("versions", f"source runs {src_version} but target {target}'s server "
                     f"binary is {version}; a datadir only moves between servers of the same "
                     "major.minor version")


def _check_sudo(report: Preflight, executor: Executor, role: str) -> None:
    """A sudo host (servers.NAME.sudo) whose sudoers lacks the rule: refused with the line."""
    try:
        executor.check_sudo()
    except SudoRefused as exc:
        report.error(f"{role}.sudo", exc.message, exc.hint)


def _check_tools(report: Preflight, executor: Executor, role: str, tools: list[str]) -> None:
    for tool in remote.missing_tools(executor, tools):
        report.error(f"{role}.tools", f"`{tool}` is not installed on {executor.name}")


def _check_source_files(report: Preflight, runtime: Runtime, src: Server, source: str,
                        job_id: str) -> None:
    executor = runtime.executor(source)
    datadir = runtime.config.server(source).datadir
    live = os.path.normpath(str(src.variable("datadir") or ""))
    if live and os.path.normpath(datadir) != live:
        report.error("source.datadir", f"servers.{source}.datadir is {datadir} but the server "
                     f"uses {live}")
        return
    try:
        tablespaces = preflight_layout.check_tablespaces(src)
    except MySQLError as exc:
        report.warn("source.layout", f"source {source}: cannot list its tablespaces: "
                    f"{exc.message}")
        tablespaces = []
    preflight_layout.check_settings(report, "source", source, executor, datadir,
                                    preflight_layout.settings_of_server(src), "live value",
                                    tablespaces)
    preflight_layout.check_nested(report, "source", source, executor, datadir)
    if report.errors:
        return
    try:
        conf = runtime.config.server(source)
        backend = backend_for(executor, datadir, conf.snapshot, conf)
    except RefusedError as exc:
        _check_backup_pipeline(report, runtime, source, exc)
    else:
        try:
            plan = backend.plan(executor, source, datadir, job_id)
        except RefusedError as exc:
            report.error("source.snapshot", f"source {source}: {exc.message}", exc.hint)
            return
        report.facts.update(pipeline="snapshot", snapshot_backend=backend.name,
                            snapshot_plan=plan.as_dict())
    _check_faults_fit(report)
    if report.errors:
        return
    excludes = list(STATIC_EXCLUDES) + log_excludes(
        datadir, [src.variable("log_bin_basename"), src.variable("relay_log_basename")])
    excludes += file_excludes(datadir, [_variable_or_none(src, name) for name in
                                        ("master_info_file", "relay_log_info_file",
                                         "log_bin_index", "relay_log_index")])
    if not runtime.config.clone.warm_target:
        # Cold means cold: not whatever list the source's datadir holds (its last
        # shutdown's, an earlier clone's dump), which the target would load at start.
        excludes += file_excludes(datadir, [
            _variable_or_none(src, "innodb_buffer_pool_filename") or warm.DEFAULT_FILENAME])
    report.facts["excludes"] = excludes
    listing = executor.run(["find", datadir, "-xdev", "-type", "f", "-printf", r"%P\t%s\n"],
                           timeout=600).stdout
    total = files = everything = 0
    for line in listing.splitlines():
        rel, _, size = line.rpartition("\t")
        if rel:
            everything += int(size)
        if rel and not is_excluded(rel, excludes):
            total += int(size)
            files += 1
    report.facts["ship_bytes"] = total
    report.facts["ship_files"] = files
    # zfs send/recv copies the whole dataset, binlogs and relay logs included (the
    # target drops them afterwards): the space it needs is that of everything.
    report.facts["dataset_bytes"] = everything


def _variable_or_none(server: Server, name: str) -> str | None:
    """A server variable that may not exist in this flavor/version."""
    try:
        value = server.variable(name)
    except MySQLError:
        return None
    return None if value is None else str(value)


def pipeline_for(runtime: Runtime, source: str) -> str:
    """The step list a new job runs, fixed when it starts; its preflight confirms it.

    A snapshot where a backend fits the source's datadir (or one is configured), else
    the streamed hot backup, whose tools the preflight then checks (and refuses without).
    """
    conf = runtime.config.server(source)
    try:
        backend_for(runtime.executor(source), conf.datadir, conf.snapshot)
    except RefusedError:
        return "backup"
    except HotcopyError:
        return "snapshot"  # the host is unreachable: the preflight says so, with a hint
    return "snapshot"


def _check_backup_pipeline(report: Preflight, runtime: Runtime, source: str,
                           no_snapshot: RefusedError) -> None:
    """Without a snapshot, the hot backup: its tool on both hosts, fitting the server."""
    target = str(report.facts["target"])
    flavor = str(report.facts.get("source_flavor") or "mariadb")
    probes, problems = backup_tool.check_hosts(
        {source: runtime.executor(source), target: runtime.executor(target)}, flavor,
        str(report.facts.get("source_version", "")),
        paced=bool(runtime.config.transfer.bwlimit_kbps))
    choice = backup_tool.choose_pipeline(no_snapshot.message, problems)
    if choice.pipeline is None:
        names = backup_tool.TOOLS[flavor]
        report.error("source.snapshot", f"source {source}: {no_snapshot.message}; and the "
                     f"fallback without snapshots, a streamed hot backup with "
                     f"{names.backup[-1]}, cannot run either: " + "; ".join(problems),
                     hint=f"{no_snapshot.hint or 'put the datadir on a snapshot-capable volume'}"
                          f"; or install {names.package} on both hosts")
        return
    report.facts.update(pipeline="backup", backup_tools={
        "source": probes[0].tool.as_dict() if probes[0].tool else None,
        "target": probes[1].tool.as_dict() if probes[1].tool else None})
    report.warn("pipeline", f"source {source}: no snapshot possible, so a hot backup with "
                f"{probes[0].tool.path if probes[0].tool else '?'} is streamed instead: the "
                "source's replication stays paused for the whole copy, not milliseconds")


def _check_faults_fit(report: Preflight) -> None:
    """A fault naming a step of the other pipeline would never fire in this one."""
    spec = os.environ.get(faults.ENVIRONMENT_VARIABLE, "")
    pipeline = report.facts.get("pipeline")
    if not spec.strip() or pipeline is None:
        return
    from hotcopy.workflows.clone import PIPELINES  # late: the clone imports this module

    steps = [step.name for step in PIPELINES[str(pipeline)]]
    try:
        parsed = faults.parse(spec)
    except (RefusedError, ValueError):
        return  # _check_faults reported it
    for fault in parsed:
        if fault.step not in steps:
            report.error("faults", f"{faults.ENVIRONMENT_VARIABLE}: '{fault.kind}:{fault.step}' "
                         f"names no step of the {pipeline} pipeline this clone runs, so it "
                         "would never fire", hint="its steps: " + ", ".join(steps))


def _check_target_files(report: Preflight, runtime: Runtime, target: str) -> None:
    executor = runtime.executor(target)
    datadir = runtime.config.server(target).datadir
    parent = os.path.dirname(datadir)
    if not executor.exists(parent):
        report.error("target.datadir", f"{parent} does not exist on {executor.name}")
        return
    if executor.exists(datadir):
        owner = executor.run(["stat", "-c", "%u:%g %a", datadir]).stdout.split()
        report.facts["target_owner"], report.facts["target_mode"] = owner[0], owner[1]
    else:
        report.facts["target_owner"], report.facts["target_mode"] = "mysql:mysql", "750"
    layout = read_layout(executor, runtime.config.server(target).defaults_file)
    preflight_layout.check_settings(report, "target", target, executor, datadir,
                                    preflight_layout.settings_of_defaults(layout.options),
                                    f"in {layout.defaults_file}")
    if report.facts.get("target_running"):
        preflight_layout.check_settings(report, "target", target, executor, datadir,
                                        preflight_layout.settings_of_server(
                                            runtime.server(target)), "live value")
    preflight_layout.check_nested(report, "target", target, executor, datadir)
    preflight_layout.check_not_mount_point(report, "target", target, executor, datadir)
    if layout.datadir and os.path.normpath(layout.datadir) != os.path.normpath(datadir):
        report.error("target.datadir", f"servers.{target}.datadir is {datadir} but its "
                     f"defaults file says {layout.datadir}")
    avail = int(executor.run(["df", "--output=avail", "-B1", parent]).stdout.split()[-1])
    data = int(report.facts.get("ship_bytes", 0))
    if report.facts.get("snapshot_backend") == "zfs":
        data = max(data, int(report.facts.get("dataset_bytes", 0)))
    margin = runtime.config.clone.free_space_margin
    need = space.space_needed(data, margin)
    report.facts["target_free_bytes"] = avail
    if avail < need:
        report.error("target.space", f"target {target}: {parent} has {human_bytes(avail)} free "
                     f"but the copy needs {human_bytes(need)} ({human_bytes(data)} of data plus "
                     f"{human_bytes(need - data)}: clone.free_space_margin = {margin:.0%}, and "
                     f"at least {human_bytes(2 * space.TARGET_WRITE_ROOM)} so the running "
                     "mysqld there keeps room to write)",
                     hint=f"free at least {human_bytes(need - avail)} on that filesystem of "
                          f"{target} ({executor.name}); the old datadir stays there until "
                          "the clone commits")
