"""The source and transfer steps of the fallback without snapshots: a streamed hot backup.

When no snapshot can be taken, the backup tool (mariabackup, or xtrabackup for MySQL)
copies the running source and streams it straight into the target's staging directory:
the target listens for this job alone (socat bound to the target's address, accepting
the source's address only, a one-time token checked before a byte is extracted, as
transfer/stream.py does for tar), ``mbstream -x`` unpacks. The target prepares the copy
and the clone goes on with the same installation, replication and verification steps
as the snapshot pipeline.

The source pays more than with a snapshot, and the report says how much, measured
rather than assumed: the write lock from the tool's own log (stamped on the source as
each line is written, since the tool's stamps have whole seconds only), and the time
its SQL thread was stopped by polling the server while the backup runs.

The admin account reaches the source host as a 0600 option file in a root-only job
directory, never in argv, and is removed as soon as the backup ends (its undo first).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hotcopy import remote
from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor
from hotcopy.mysql import backup_tool, replication
from hotcopy.mysql.backup_tool import BackupTool
from hotcopy.mysql.flavor import ReplicaStatus
from hotcopy.mysql.option_file import render_client_group
from hotcopy.mysql.server import Server
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action
from hotcopy.transfer.base import (
    ProgressMeter,
    candidate_ports,
    empty_directory,
    kill_marked,
    marker,
)
from hotcopy.transfer.rsyncd import private_directory
from hotcopy.transfer.stream import (
    connect_address,
    listen_address,
    listening,
    resolve,
    spawn_listener,
)
from hotcopy.workflows.report import ProgressRecorder
from hotcopy.workflows.runner import StepContext
from hotcopy.workflows.target_steps import SpaceGuard, space_reserve

log = logging.getLogger(__name__)


@undo_action("backup.release_source",
             describe="stop the backup on {server} if it still runs, and start the "
                      "replication SQL thread it stopped")
def _undo_release_source(runtime: Runtime, params: Mapping[str, Any]) -> None:
    """The tool stops the SQL thread itself and restarts it only if it ends normally.

    Killing it first means it cannot stop the thread again after we started it.
    """
    kill_marked(runtime.executor(params["server"]), params["job_id"])
    server = runtime.server(params["server"])
    server.execute(server.flavor.start_sql_thread())


def listen(ctx: StepContext) -> dict[str, Any]:
    """Both job directories, the one-time token, and the target's listener."""
    runtime, job_id = ctx.runtime, ctx.job_id
    source, target = ctx.params["source"], ctx.params["target"]
    src, tgt = runtime.executor(source), runtime.executor(target)
    state_dir = runtime.config.transfer.state_dir
    params = {"server": target, "workdir": f"{state_dir}/{job_id}-backup-recv",
              "source": source, "source_workdir": f"{state_dir}/{job_id}-backup-send",
              "job_id": job_id}
    ctx.push("transfer.stream.stop", params)
    private_directory(src, params["source_workdir"])
    src.run(["mkdir", "-m", "700", f"{params['source_workdir']}/work"])
    private_directory(tgt, params["workdir"])
    token = secrets.token_hex(32).encode()
    src.write_file(f"{params['source_workdir']}/token", token)
    src.write_file(f"{params['source_workdir']}/send.sh",
                   remote.script("backup_sender.sh").encode(), mode=0o700)
    tgt.write_file(f"{params['workdir']}/token", token)
    tgt.write_file(f"{params['workdir']}/receive.sh",
                   remote.script("backup_receiver.sh").encode(), mode=0o700)
    tgt.write_file(f"{params['workdir']}/staging", ctx.state["staging"].encode())
    tool = BackupTool.from_dict(ctx.state["backup_tools"]["target"])
    tgt.write_file(f"{params['workdir']}/extractor", tool.extractor.encode())
    address = runtime.config.server(target).host
    peer = resolve(tgt, runtime.config.server(source).host)
    port = _start_listener(runtime, tgt, params["workdir"], address, peer, job_id)
    return {"backup_listener": {**params, "port": port, "peer": peer},
            "_detail": f"xbstream listener on {address}:{port} for {peer}"}


def _start_listener(runtime: Runtime, executor: Executor, workdir: str, address: str,
                    peer: str, job_id: str) -> int:
    port_range = runtime.config.transfer.port_range
    for port in candidate_ports(executor, port_range):
        listen_on = listen_address(address, peer, port, children=4)
        pid = spawn_listener(executor, workdir, listen_on, job_id,
                             runtime.config.transfer.io_timeout_s)
        if pid is not None and listening(executor, port, pid):
            log.info("backup listener on %s:%d for %s", address, port, peer)
            return port
        kill_marked(executor, job_id)
    tail = executor.run(["tail", "-n", "3", f"{workdir}/socat.log"], check=False).stdout
    raise HotcopyError(f"could not start a listener for the backup stream on {executor.name} "
                       f"(ports {port_range}): {tail.strip()}")


class _Output:
    """What the sender reports, line by line: log, byte counts, the receiver's answer."""

    def __init__(self, on_bytes: Callable[[int], None]) -> None:
        self.log: list[tuple[float, str]] = []
        self.bytes = 0
        self.received = False
        self.notes: list[str] = []
        self._on_bytes = on_bytes

    def on_line(self, line: str) -> None:
        text = line.rstrip("\n")
        if text.startswith("HOTCOPY-LOG "):
            stamp, _, message = text[len("HOTCOPY-LOG "):].partition(" ")
            try:
                at = float(stamp.replace(",", "."))
            except ValueError:  # a bash without EPOCHREALTIME: stamp on arrival
                at, message = time.time(), text[len("HOTCOPY-LOG "):]
            self.log.append((at, message))
        elif text.strip().isdigit():
            self.bytes = int(text.strip())
            self._on_bytes(self.bytes)
        elif text.startswith("HOTCOPY-OK"):
            self.received = True
        elif text.strip():
            self.notes = [*self.notes[-4:], text.strip()[-300:]]

    @property
    def completed(self) -> bool:
        return any("completed OK!" in message for _, message in self.log[-5:])

    def failure(self) -> str:
        errors = [m.strip() for _, m in self.log if "[ERROR]" in m or "Error" in m]
        tail = errors[-3:] or [m.strip() for _, m in self.log[-3:]]
        return "; ".join([*tail, *self.notes]) or "no output"


def backup_stream(ctx: StepContext) -> dict[str, Any]:
    """Run the backup on the source into the listener; the source is released at its end."""
    runtime, config = ctx.runtime, ctx.runtime.config
    source, target = ctx.params["source"], ctx.params["target"]
    stream = ctx.state["backup_listener"]
    tool = BackupTool.from_dict(ctx.state["backup_tools"]["source"])
    src, tgt = runtime.executor(source), runtime.executor(target)
    server = runtime.server(source)
    status = replication.single_channel(server)
    if status is None:
        raise HotcopyError(f"{source} stopped being a replica during the clone")
    workdir = stream["source_workdir"]
    cnf = f"{workdir}/admin.cnf"
    ctx.push("backup.release_source", {"server": source, "job_id": ctx.job_id})
    ctx.push("host.remove_file", {"server": source, "path": cnf})
    src.write_file(cnf, backup_tool.option_file(config.server(source).defaults_file,
                                                render_client_group(config.mysql.option_file)))
    argv = backup_tool.backup_command(
        tool, defaults_file=cnf, host=config.server(source).host,
        port=config.server(source).port, target_dir=f"{workdir}/target",
        tmpdir=f"{workdir}/work", parallel=config.transfer.parallel)
    empty_directory(tgt, ctx.state["staging"])  # never extract over a partial run
    expected = _expected_bytes(ctx, src)

    record = ProgressRecorder(ctx.info)  # `hotcopy show` of the running job reads it

    def on_progress(done: int, total: int | None, rate: float | None) -> None:
        shown = max(done, total) if total else None
        record(done, shown)
        ctx.reporter.progress(done, shown, rate)
        if total:
            ctx.faults.progress("backup_stream", done / total)

    meter = ProgressMeter(on_progress, expected)
    output = _Output(lambda done: meter.update(0, done))
    started = time.monotonic()
    with backup_tool.SqlThreadWatch(server) as watch:
        result = _send(ctx, src, tgt, stream, argv, output, expected)
        seconds = time.monotonic() - started
        if not (result == 0 and output.received and output.completed):
            raise HotcopyError(f"the backup of {source} failed (exit {result}): "
                               f"{output.failure()}{_refusals(tgt, stream['workdir'])}",
                               hint=f"{source} keeps serving and the rollback restarts its SQL "
                                    "thread; the reason above is in the backup tool's words")
        _release(ctx, server)
        running = watch.settle()
    if not running:
        ctx.reporter.warning(f"{source}: the SQL thread did not restart after the backup")
    return _report(ctx, output, watch, status, seconds)


# Files the tool never copies as they are: it copies the redo written during the backup,
# and temporary tablespaces are rebuilt by the server.
_NOT_COPIED = ("-name", "ib_logfile*", "-o", "-name", "ibtmp*", "-o", "-path", "*/#innodb_redo/*",
               "-o", "-path", "*/#innodb_temp/*")


def _expected_bytes(ctx: StepContext, src: Executor) -> int | None:
    """What the stream should about carry, for progress (the preflight counted it all)."""
    ship = int(ctx.state.get("ship_bytes") or 0)
    datadir = ctx.runtime.config.server(ctx.params["source"]).datadir
    sizes = src.run(["find", datadir, "-xdev", "-type", "f", "(", *_NOT_COPIED, ")",
                     "-printf", r"%s\n"], check=False, timeout=120).stdout.split()
    skipped = sum(int(size) for size in sizes if size.isdigit())
    return max(0, ship - skipped) or None


def _send(ctx: StepContext, src: Executor, tgt: Executor, stream: Mapping[str, Any],
          argv: list[str], output: _Output, expected: int | None) -> int:
    config = ctx.runtime.config.transfer
    pv = not remote.missing_tools(src, ["pv"])
    limit = (config.bwlimit_kbps or 0) * 1024
    if limit and not pv:
        raise HotcopyError(f"transfer.bwlimit_kbps needs pv on {ctx.params['source']} to pace "
                           "the backup stream, and it is not installed")
    connect = connect_address(ctx.runtime.config.server(ctx.params["target"]).host,
                              stream["peer"], stream["port"], config.connect_timeout_s)

    def stop_stream() -> None:  # not once deposed: see transfer.base.unless_deposed
        if ctx.may_act("stopping a backup stream that fills the target"):
            kill_marked(tgt, ctx.job_id)

    guard = SpaceGuard(tgt, ctx.state["staging"], space_reserve(ctx), stop_stream,
                       lambda: None if not expected else max(0, expected - output.bytes))
    try:
        with guard:
            result = src.stream(
                ["env", marker(ctx.job_id), "bash", f"{stream['source_workdir']}/send.sh",
                 connect, "pv" if pv else "none", str(limit), str(config.io_timeout_s),
                 *argv], output.on_line, timeout=config.timeout_s, check=False)
    except HotcopyError as exc:
        if guard.tripped_at is None:
            raise
        raise guard.error(ctx.params["target"], None) from exc
    if guard.tripped_at is not None:
        raise guard.error(ctx.params["target"], None)
    return result.returncode


def _refusals(executor: Executor, workdir: str) -> str:
    refused = executor.run(["tail", "-n", "2", f"{workdir}/refused"], check=False).stdout
    return f" (the receiver refused: {refused.strip()})" if refused.strip() else ""


def _release(ctx: StepContext, server: Server) -> None:
    """The copy is complete: the credentials go, the SQL thread runs again (idempotent)."""
    for entry in reversed(ctx.outstanding(steps={"backup_stream"})):
        if entry.action == "backup.release_source":
            server.execute(server.flavor.start_sql_thread())
            ctx.tx.remove(entry.seq)  # the tool has ended: nothing of it left to stop
        else:
            ctx.tx.exec_remove(entry.seq)


def _report(ctx: StepContext, output: _Output, watch: backup_tool.SqlThreadWatch,
            status: ReplicaStatus, seconds: float) -> dict[str, Any]:
    span = backup_tool.write_lock_span(output.log)
    lock_ms = None if span is None else round(span.ms, 1)
    paused = watch.stopped_ms()
    paused_ms = None if paused is None else round(paused, 1)
    ctx.info(source_lock_ms=lock_ms, source_replication_paused_ms=paused_ms,
             bytes_transferred=output.bytes or None, literal_bytes=output.bytes or None)
    if span is None:
        ctx.reporter.warning("the backup tool's log shows no write lock: source_lock_ms "
                             "is not known for this clone")
    rate = output.bytes / seconds / 1e6 if seconds else 0
    return {"backup_master": {"host": status.master_host, "port": status.master_port,
                              "user": status.master_user},
            "source_lock_ms": lock_ms, "source_replication_paused_ms": paused_ms,
            "lock_log": None if span is None else [span.start_line, span.end_line],
            "sql_thread_polls": len(watch.samples), "failed_polls": watch.failed_polls,
            "bytes_transferred": output.bytes or None, "transfer_s": seconds,
            "_detail": f"{output.bytes / 1e6:.1f} MB streamed, {rate:.0f} MB/s; write lock "
                       f"{_ms(lock_ms)} (tool's log), replication paused {_ms(paused_ms)} "
                       "(polled)"}


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def stop_stream(ctx: StepContext) -> dict[str, Any]:
    """The source needs nothing more: stop the listener, remove both job directories."""
    for entry in reversed(ctx.outstanding(steps={"listen", "backup_stream"})):
        ctx.tx.exec_remove(entry.seq)
    return {}


def prepare_backup(ctx: StepContext) -> dict[str, Any]:
    """Make the copy consistent on the target, read its position, drop the tool's files."""
    runtime = ctx.runtime
    target = ctx.params["target"]
    executor = runtime.executor(target)
    staging = ctx.state["staging"]
    tool = BackupTool.from_dict(ctx.state["backup_tools"]["target"])
    result = executor.run(backup_tool.prepare_command(tool, staging), check=False,
                          timeout=runtime.config.transfer.timeout_s)
    if not result.ok or "completed OK" not in result.stderr + result.stdout:
        tail = " ".join(result.stderr.strip().splitlines()[-3:])
        raise HotcopyError(f"`{Path(tool.path).name} --prepare` failed on {target} (exit "
                           f"{result.returncode}): {tail}")
    flavor = runtime.server(ctx.params["source"]).flavor
    master = ctx.state["backup_master"]
    coords = backup_tool.coordinates(
        _read_any(executor, staging, backup_tool.SLAVE_INFO_FILES),
        _read_any(executor, staging, backup_tool.BINLOG_INFO_FILES),
        flavor=flavor.name, gtid_variable=flavor.gtid_variable(), master_host=master["host"],
        master_port=int(master["port"]), master_user=master["user"])
    names: list[str] = []
    for pattern in backup_tool.HELPER_PATTERNS:
        names += [*(["-o"] if names else []), "-name", pattern]
    executor.run(["find", staging, "-mindepth", "1", "-maxdepth", "1", "(", *names, ")",
                  "-exec", "rm", "-rf", "--", "{}", "+"])
    where = (f"{coords.gtid_variable}={coords.gtid}" if coords.gtid
             else f"{coords.master_log_file}:{coords.master_log_pos}")
    return {"coordinates": coords.as_dict(), "_detail": f"prepared; position {where}"}


def _read_any(executor: Executor, directory: str, names: Sequence[str]) -> str | None:
    for name in names:
        path = f"{directory}/{name}"
        if executor.exists(path):
            return executor.read_file(path).decode(errors="replace")
    return None
