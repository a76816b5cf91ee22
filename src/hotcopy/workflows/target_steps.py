"""Steps 9-17: ship the snapshot to the target, install it, start it, re-point it.

The target keeps serving (or stays down, if it was down) while the data travels into
a staging directory beside its datadir; it is stopped only for the swap, and its old
datadir stays next to the new one until the new one replicates.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor, files
from hotcopy.mysql import replication
from hotcopy.mysql.flavor import Coordinates
from hotcopy.mysql.flavor.base import set_global
from hotcopy.mysql.option_file import read_client_options
from hotcopy.mysql.server import Server
from hotcopy.progress import human_bytes, human_duration
from hotcopy.snapshot.base import SnapshotPlan
from hotcopy.space import guard_reserve
from hotcopy.transfer.base import (
    ServerHandle,
    TransferRequest,
    is_excluded,
    kill_marked,
    method_for,
    unless_deposed,
)
from hotcopy.workflows import catchup_durability, pacing
from hotcopy.workflows.report import ProgressRecorder
from hotcopy.workflows.runner import StepContext
from hotcopy.workflows.snapshot_watch import SnapshotUnusable, SnapshotWatch
from hotcopy.workflows.writeback import StagingWriteback

log = logging.getLogger(__name__)


def staging_path(ctx: StepContext) -> str:
    return f"{ctx.runtime.config.server(ctx.params['target']).datadir}.hotcopy-new-{ctx.job_id}"


def old_datadir_path(ctx: StepContext) -> str:
    return f"{ctx.runtime.config.server(ctx.params['target']).datadir}.hotcopy-old-{ctx.job_id}"


def prepare_target(ctx: StepContext) -> dict[str, Any]:
    target = ctx.params["target"]
    path = staging_path(ctx)
    ctx.push("host.remove_tree", {"server": target, "path": path})
    executor = ctx.runtime.executor(target)
    datadir = ctx.runtime.config.server(target).datadir
    if ctx.state.get("delta"):
        if not executor.exists(path):  # (a resumed job keeps what its pull already fixed)
            # Writable, and a subvolume of its own: the datadir is never written.
            executor.run(["btrfs", "subvolume", "snapshot", datadir, path])
        return {"staging": path, "_detail": f"{path} (delta: a snapshot of {datadir})"}
    files.make_directory(executor, path, like=datadir)
    return {"staging": path, "_detail": path}


def _request(ctx: StepContext) -> TransferRequest:
    config = ctx.runtime.config
    plan = SnapshotPlan.from_dict(ctx.state["snapshot"])
    return TransferRequest(
        job_id=ctx.job_id, source=ctx.params["source"], target=ctx.params["target"],
        source_address=config.server(ctx.params["source"]).host,
        target_address=config.server(ctx.params["target"]).host,
        source_path=plan.exposed_datadir, destination=ctx.state["staging"],
        excludes=list(ctx.state["excludes"]), expected_bytes=ctx.state.get("ship_bytes"),
        bwlimit_kbps=config.transfer.bwlimit_kbps, timeout_s=config.transfer.timeout_s,
        retries=config.transfer.retries, before_retry=_fenced_retry(ctx),
        may_act=ctx.may_act, delta=bool(ctx.state.get("delta")))


def _fenced_retry(ctx: StepContext) -> Callable[[int], None]:
    """Journal each restart of the transfer (``show`` reports it) as a fenced write: a
    controller that lost the job (its lease expired, another one claimed it) gets
    FencedOut here and restarts nothing on the hosts."""
    def before_retry(attempt: int) -> None:
        log.info("transfer attempt %d: confirming this controller still owns job %s",
                 attempt, ctx.job_id)
        ctx.info(transfer_attempt=attempt)
    return before_retry


def serve(ctx: StepContext) -> dict[str, Any]:
    request = _request(ctx)
    method = method_for(ctx.runtime, request, ctx.params.get("transfer") or
                        ctx.runtime.config.transfer.method, ctx.state["snapshot"]["backend"])
    handle = method.prepare(ctx.runtime, request)
    ctx.push(f"transfer.{method.name}.stop", {"server": handle.server, **handle.params})
    method.serve(ctx.runtime, request, handle)
    ctx.live["transfer"] = (method, handle)
    return {"transfer_method": method.name, **pacing.measure_baseline(ctx),
            "_detail": f"{method.name} on {request.source_address}:{handle.params.get('port')}"}


class SpaceGuard:
    """Stops the transfer before it takes the last bytes of the target's filesystem.

    The target's mysqld keeps serving from that filesystem while the copy arrives, and
    InnoDB gives up on a write that hits ENOSPC: a copy that fills the disk would take
    the target down. The preflight saw enough room, but something else may eat it
    meanwhile, so free space is watched. The guard trips when, at the rate space is
    going, the next readings would fall under the reserve (never counting on more than
    what the copy still has to write, so a transfer the preflight let through cannot
    trip it near its end), and kills the receiving end.
    """

    def __init__(self, executor: Executor, path: str, reserve: int, stop: Callable[[], None],
                 remaining: Callable[[], int | None], *, interval_s: float = 0.5) -> None:
        self.executor = executor
        self.path = path
        self.reserve = reserve
        self.tripped_at: int | None = None
        self._stop = stop
        self._remaining = remaining
        self._interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="space-guard", daemon=True)

    def _free(self) -> int | None:
        out = self.executor.run(["df", "-B1", "--output=avail", self.path], check=False,
                                timeout=30).stdout.split()
        return int(out[-1]) if out and out[-1].isdigit() else None

    def _watch(self) -> None:
        previous: int | None = None
        while not self._done.wait(self._interval_s):
            try:
                free = self._free()
            except HotcopyError:
                log.debug("space guard: df failed", exc_info=True)
                continue
            if free is None:
                continue
            soon = 2 * max(0, previous - free) if previous is not None else 0
            left = self._remaining()
            if free < self.reserve + (soon if left is None else min(soon, left)):
                self.tripped_at = free
                log.warning("%s: %d bytes free under %s; stopping the transfer",
                            self.executor.name, free, self.path)
                self._stop()
                return
            previous = free

    def __enter__(self) -> SpaceGuard:
        # Once before anything is written: a target already below the reserve (filled
        # since the preflight, or a resume onto a fuller disk) must not get a first write.
        free = self._free()
        if free is not None and free < self.reserve:
            self.tripped_at = free
            raise HotcopyError(f"{free} bytes free under {self.path}, below the reserve")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=60)

    def error(self, target: str, missing: int | None) -> HotcopyError:
        left = f", {missing / 1e6:.0f} MB of the copy still to come" if missing else ""
        return HotcopyError(
            f"the target's filesystem is nearly full: {(self.tripped_at or 0) / 1e6:.0f} MB "
            f"free under {self.path} on {target}{left}; the transfer was stopped so that "
            f"the running mysqld there keeps room to write",
            hint="something else wrote to that filesystem after the preflight check; free "
                 "space there, then clone again")


def space_reserve(ctx: StepContext) -> int:
    return guard_reserve(int(ctx.state.get("ship_bytes") or 0),
                         ctx.runtime.config.clone.free_space_margin)


def pull(ctx: StepContext) -> dict[str, Any]:
    method, handle = ctx.live["transfer"]
    assert isinstance(handle, ServerHandle)
    source = ctx.params["source"]
    # A copy-on-write snapshot with a fixed size (LVM) must not overflow while we read it.
    watch = SnapshotWatch(ctx.runtime, source, SnapshotPlan.from_dict(ctx.state["snapshot"]))
    request = _request(ctx)
    request.before_retry = watch.guard_retry(request.before_retry)
    done_bytes = [0]

    def remaining() -> int | None:
        return None if not request.expected_bytes else \
            max(0, request.expected_bytes - done_bytes[0])

    executor = ctx.runtime.executor(request.target)
    record = ProgressRecorder(ctx.info)  # `hotcopy show` of the running job reads it

    def on_progress(done: int, total: int | None, rate: float | None) -> None:
        done_bytes[0] = done
        record(done, total)
        ctx.reporter.progress(done, total, rate)
        if total:
            ctx.faults.progress("pull", done / total)
        if watch.reason is None and watch.filling():
            unless_deposed(request, "stopping the copy of an overflowing snapshot",
                           lambda: kill_marked(executor, ctx.job_id))()
            # Raised through the transfer's progress callback: not a stream failure
            # its retry loop would catch; a second read of that snapshot is no better.
            raise watch.error("stopped the copy from {source}")

    guard = SpaceGuard(executor, request.destination, space_reserve(ctx),
                       unless_deposed(request, "stopping a copy that fills the target",
                                      lambda: kill_marked(executor, ctx.job_id)), remaining)
    writeback = StagingWriteback(executor, request.destination,
                                 ctx.runtime.config.transfer.writeback_interval_s)
    try:
        with guard, writeback, \
                pacing.paced(ctx, method, handle, lambda: done_bytes[0]) as throttle:
            result = method.pull(ctx.runtime, request, handle, on_progress)
    except SnapshotUnusable:
        raise
    except HotcopyError as exc:
        # A stream that failed reading a snapshot that broke under it (EIO) says only
        # that it failed: the snapshot says why.
        if watch.broken():
            raise watch.error("the copy from {source} failed") from exc
        if guard.tripped_at is None:
            raise
        raise guard.error(request.target, remaining()) from exc
    if watch.broken():  # the copy looked complete, but what it read may be padding
        raise watch.error("the copy from {source} cannot be trusted")
    # On disk before the old mysqld is asked to stop: its shutdown's fsyncs would
    # otherwise wait for this backlog while the target is down (workflows/writeback.py).
    flush_s = writeback.final()
    ctx.info(bytes_transferred=result.bytes_transferred, literal_bytes=result.literal_bytes)
    # The rate of everything copied, as the progress bar counts it (not only the literal
    # data rsync sent), so the step's figure and the bar's final one agree.
    rate = result.bytes_transferred / result.seconds if result.seconds else 0
    paced = pacing.outputs(throttle, result.seconds, result.bytes_transferred)
    return {"bytes_transferred": result.bytes_transferred, "literal_bytes": result.literal_bytes,
            "files_transferred": result.files_transferred, "transfer_s": result.seconds,
            "transfer_attempts": result.attempts, **paced,
            "staging_flush_ms": round(flush_s * 1000, 1),
            "staging_writeback_passes": writeback.passes,
            "_detail": f"{human_bytes(result.bytes_transferred)} in "
                       f"{result.files_transferred} files ({human_bytes(result.literal_bytes)} "
                       f"sent), {human_bytes(rate)}/s; on disk {human_duration(flush_s)} later"
                       + (f"; {paced.pop('_pacing')}" if paced else "")}


def drop_snapshot(ctx: StepContext) -> dict[str, Any]:
    """The source needs nothing more: stop serving and destroy the snapshot now."""
    for entry in reversed(ctx.outstanding(steps={"serve", "snapshot"})):
        ctx.tx.exec_remove(entry.seq)
    ctx.live.pop("transfer", None)
    return {}


def stop_target(ctx: StepContext) -> dict[str, Any]:
    target = ctx.params["target"]
    control = ctx.runtime.mysqld(target)
    if not control.is_running():
        control.ensure_stopped_for_real()  # a mysqld we cannot see must not lose its datadir
        return {"target_was_running": False, "_detail": "was not running"}
    ctx.push("mysqld.start", {"server": target})
    server = ctx.runtime.server(target)
    try:
        # The old datadir is kept only to roll back to, and InnoDB recovers it then:
        # skip flushing the buffer pool at shutdown (seconds on a large pool).
        server.execute(set_global("innodb_fast_shutdown", 2))
    except HotcopyError as exc:
        log.info("%s: fast shutdown not set (%s); a normal shutdown follows", target, exc)
    server.close()
    control.stop()
    return {"target_was_running": True}


def swap_datadir(ctx: StepContext) -> dict[str, Any]:
    target = ctx.params["target"]
    executor = ctx.runtime.executor(target)
    datadir = ctx.runtime.config.server(target).datadir
    staging = ctx.state["staging"]
    if not executor.exists(staging):
        if executor.exists(datadir) and not executor.exists(old_datadir_path(ctx)):
            raise HotcopyError(f"staging directory {staging} vanished on {executor.name}")
        return {"_detail": "already swapped"}
    leftovers = executor.run(["find", staging, "-mindepth", "1", "-maxdepth", "1",
                              "-printf", "%P\n"]).stdout.split("\n")
    stray = [name for name in leftovers if name and is_excluded(name, ctx.state["excludes"])]
    for name in stray:
        executor.run(["rm", "-rf", "--", os.path.join(staging, name)])
    executor.run(["chown", "-R", ctx.state["target_owner"], staging], timeout=3600)
    executor.run(["chmod", ctx.state["target_mode"], staging])
    if executor.exists(datadir):
        moved_to = old_datadir_path(ctx)
        ctx.push("host.restore_datadir", {"server": target, "datadir": datadir,
                                          "moved_to": moved_to,
                                          "original_identity": files.identity(executor,
                                                                              datadir)})
        files.rename(executor, datadir, moved_to)
    else:
        ctx.push("host.remove_tree", {"server": target, "path": datadir})
        moved_to = ""
    files.rename(executor, staging, datadir)
    return {"old_datadir": moved_to,
            "_detail": f"old datadir moved to {moved_to}" if moved_to else ""}


def start_target(ctx: StepContext) -> dict[str, Any]:
    target = ctx.params["target"]
    ctx.push("mysqld.stop", {"server": target})
    control = ctx.runtime.mysqld(target)
    if not control.is_running():
        control.start(timeout=ctx.runtime.config.clone.start_timeout_s)
    server = ctx.runtime.server(target)
    server.close()
    server.forget_flavor()
    return {"_detail": server.version_string}


def replication_account(ctx: StepContext, coords: Coordinates) -> tuple[str, str]:
    """From [replication] option_file, else the source's own master.info (never logged)."""
    option_file = ctx.runtime.config.replication.option_file
    if option_file:
        options = read_client_options(option_file)  # the mysql client's syntax, quotes too
        if options.user:
            return options.user, options.password or ""
        raise HotcopyError(f"replication.option_file {option_file} has no [client] user")
    source = ctx.params["source"]
    server = ctx.runtime.server(source)
    datadir = ctx.runtime.config.server(source).datadir
    name = str(server.variable("master_info_file") or "master.info")
    path = name if name.startswith("/") else os.path.join(datadir, name)
    account = replication.parse_master_info(
        ctx.runtime.executor(source).read_file(path).decode(errors="replace"))
    if account is None:
        raise HotcopyError(f"cannot read the replication account from {path} on {source}",
                           hint="name one in [replication] option_file")
    if account[0] != coords.master_user:
        log.warning("master.info user %s differs from Master_User %s", account[0],
                    coords.master_user)
    return account


def change_master(ctx: StepContext) -> dict[str, Any]:
    server = ctx.runtime.server(ctx.params["target"])
    flavor = server.flavor
    coords, note = replication.verified_gtid(master_server(ctx),
                                             Coordinates.from_dict(ctx.state["coordinates"]))
    user, password = replication_account(ctx, coords)
    server.execute(flavor.stop_replica())
    server.execute(flavor.reset_replica_all())
    if coords.gtid:
        for statement in flavor.prepare_gtid_position(coords.gtid):
            server.execute(statement)
    server.execute(flavor.change_master(coords, user, password))
    durability = catchup_durability.relax(ctx, server)
    server.execute(flavor.start_replica())
    where = (f"GTID {coords.gtid}" if coords.gtid
             else f"{coords.master_log_file}:{coords.master_log_pos}")
    result: dict[str, Any] = {
        "positioning": "gtid" if coords.gtid else "file/position", **durability,
        "_detail": f"replicating from {coords.master_host}:{coords.master_port} at {where}"
                   + ("; catching up without fsync" if durability.get("catchup_relaxed")
                      else "")}
    if note:
        result["positioning_note"] = note
    return result


def catch_up(ctx: StepContext) -> dict[str, Any]:
    target = ctx.runtime.server(ctx.params["target"])
    master = master_server(ctx)
    result = replication.wait_caught_up(
        target, master, timeout_s=ctx.runtime.config.clone.catchup_timeout_s)
    ctx.info(catchup_s=result.elapsed_s)
    restored = catchup_durability.restore(ctx)
    return {"catchup_s": result.elapsed_s, "caught_up_to": result.target_gtid, **restored,
            "_detail": f"caught up to {result.target_gtid or 'lag 0'}"
                       + ("; its own durability settings back" if restored else "")}


def master_server(ctx: StepContext) -> Server:
    master = ctx.state["master"]
    if master.get("name"):
        return ctx.runtime.server(master["name"])
    return ctx.runtime.server_at("master", master["host"], int(master["port"]))

