"""rsync daemon on the source, pulled by rsync on the target.

The daemon lives only for one job: its own port, a per-job user and one-time secret
(file 0600, removed afterwards), bound to the source's address, ``hosts allow`` the
target alone, one read-only module rooted at the snapshot, with the excluded files
hidden on the serving side so they cannot be fetched at all. The secret never touches
argv or the journal; the client reads it from a 0600 file that is removed afterwards.

With ``transfer.parallel`` > 1 the snapshot's file list is split into groups of about
equal size and one rsync per group runs at once (``--files-from``), each retried on its
own; the bandwidth limit is shared among them. The client helpers here serve
rsync_ssh too.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from hotcopy import remote
from hotcopy.errors import CommandError, HotcopyError
from hotcopy.hosts import Executor
from hotcopy.hosts.processes import process_alive, terminate_process
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action
from hotcopy.transfer.base import (
    ProgressCallback,
    ProgressMeter,
    ServerHandle,
    TransferRequest,
    TransferResult,
    candidate_ports,
    encode_list,
    kill_marked,
    kill_stream,
    list_tree,
    marker,
    parse_int,
    retry_delay,
    run_parallel,
    shippable,
    split_balanced,
    stream_marker,
    unless_deposed,
)

log = logging.getLogger(__name__)

MODULE = "hotcopy"
#: Client options the daemon refuses: they follow symlinks out of the snapshot, or delete
#: on the sending side. hotcopy's own client uses none of them.
REFUSED_OPTIONS = ("copy-links", "copy-unsafe-links", "copy-dirlinks", "keep-dirlinks",
                   "remove-source-files", "munge-links")
# rsync exit codes worth a retry: the network or the peer went away, not our request.
RETRYABLE = {5, 10, 12, 30, 35}
_PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%\s+([\d.]+)([kKMGT]?B)/s")
_UNITS = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def parse_progress(line: str) -> tuple[int, float] | None:
    """(bytes done, bytes/s) from an ``--info=progress2`` line."""
    match = _PROGRESS.match(line)
    if not match:
        return None
    rate = float(match.group(3)) * _UNITS.get(match.group(4), 1)
    return int(match.group(1).replace(",", "")), rate


def parse_stats(output: str) -> dict[str, int]:
    stats: dict[str, int] = {}
    for line in output.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("Total bytes received", "Literal data",
                                   "Number of regular files transferred",
                                   "Total transferred file size"):
            stats[key.strip()] = parse_int(value)
    return stats


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def private_directory(executor: Executor, path: str) -> None:
    """A fresh root-only directory for secrets: never one that someone else prepared."""
    parent = path.rsplit("/", 1)[0]
    executor.run(["mkdir", "-p", "-m", "700", parent])
    executor.run(["rm", "-rf", "--", path])
    executor.run(["mkdir", "-m", "700", path])


def write_lists(runtime: Runtime, request: TransferRequest, directory: str) -> list[str] | None:
    """Per-stream file lists (balanced by size) in directory on the target; None for one.

    The lists come from the snapshot itself, filtered by the same excludes, so every
    stream ships only what a single rsync would have shipped.
    """
    parallel = runtime.config.transfer.parallel
    if parallel <= 1 or request.delta:  # a delta needs one recursive rsync: --delete
        return None
    entries = shippable(list_tree(runtime.executor(request.source), request.source_path),
                        request.excludes)
    paths = []
    for index, group in enumerate(split_balanced(entries, parallel)):
        path = f"{directory}/files-{index}"
        runtime.executor(request.target).write_file(path, encode_list(group))
        paths.append(path)
    return paths


def client_commands(base: Sequence[str], request: TransferRequest, source_url: str,
                    lists: Sequence[str] | None) -> list[list[str]]:
    """One rsync per list (or one recursive rsync); the bandwidth limit shared among them."""
    streams = len(lists) if lists else 1
    argv = list(base)
    if request.delta:
        # Size and mtime say nothing across two servers (both replicas write the same
        # table within the same second): compare every file block by block. And what the
        # source does not ship must not stay from the target's old data, excluded or not.
        argv += ["--ignore-times", "--delete-excluded"]
    if request.bwlimit_kbps:
        argv.append(f"--bwlimit={max(1, request.bwlimit_kbps // streams)}")
    destination = request.destination.rstrip("/") + "/"
    if not lists:
        return [[*argv, "--delete", "--no-inc-recursive", source_url, destination]]
    return [[*argv, "--from0", f"--files-from={path}", source_url, destination]
            for path in lists]


def _watch_for_stall(finished: threading.Event, stalled: threading.Event,
                     last_activity: list[float], timeout_s: float,
                     stop: Callable[[], object]) -> None:
    """Until finished: if nothing was heard for timeout_s, mark it stalled and stop it."""
    while not finished.wait(1.0):
        if time.monotonic() - last_activity[0] > timeout_s:
            log.warning("a transfer stream made no progress for %.0fs; stopping it", timeout_s)
            stalled.set()
            stop()
            return


def run_clients(executor: Executor, request: TransferRequest, commands: Sequence[list[str]],
                on_progress: ProgressCallback, *, stall_timeout_s: float,
                retryable: Collection[int] = RETRYABLE) -> TransferResult:
    """rsync clients in parallel, each retried on its own (it resumes its partial files).

    Each carries the job's marker in its environment, so a rollback finds it by that.
    A client that made no progress for ``stall_timeout_s`` is stopped (it alone, by its
    stream's own marker; the others go on) and retried: on a
    silently cut link the receiving rsync keeps writing keepalives into its socket
    buffer, so its own --timeout may not fire until TCP gives up, many minutes later.
    """
    meter = ProgressMeter(on_progress, request.expected_bytes)
    started = time.monotonic()

    def client(index: int, argv: list[str],
               cancelled: threading.Event) -> tuple[dict[str, int], int]:
        last_activity = [time.monotonic()]

        def on_line(line: str) -> None:
            last_activity[0] = time.monotonic()
            parsed = parse_progress(line)
            if parsed is not None:
                meter.update(index, parsed[0])

        for attempt in range(1, request.retries + 2):
            last_activity[0] = time.monotonic()
            stalled, finished = threading.Event(), threading.Event()
            watcher = threading.Thread(
                target=_watch_for_stall, name=f"stall-watch-{index}", daemon=True,
                args=(finished, stalled, last_activity, stall_timeout_s,
                      unless_deposed(request, f"stopping stalled stream {index}",
                                     functools.partial(kill_stream, executor, request.job_id,
                                                       index))))
            watcher.start()
            try:
                result = executor.stream(["env", marker(request.job_id),
                                          stream_marker(request.job_id, index), *argv], on_line,
                                         timeout=request.timeout_s)
            except CommandError as exc:
                if (cancelled.is_set() or attempt > request.retries
                        or (exc.returncode not in retryable and not stalled.is_set())):
                    raise
                delay = retry_delay(attempt)
                log.warning("stream %d interrupted (rsync exit %s); retry %d of %d in %.0fs",
                            index, exc.returncode, attempt, request.retries, delay)
                if cancelled.wait(delay):
                    raise
                request.before_retry(attempt + 1)
                continue
            finally:
                finished.set()
                watcher.join()
            return parse_stats(result.stdout), attempt
        raise AssertionError("unreachable")

    results = run_parallel([functools.partial(client, i, argv) for i, argv in enumerate(commands)],
                           abort=unless_deposed(request, "stopping the other streams",
                                                lambda: kill_marked(executor, request.job_id)))
    totals: Counter[str] = Counter()
    for stats, _ in results:
        totals.update(stats)
    return TransferResult(totals["Total bytes received"], totals["Literal data"],
                          totals["Number of regular files transferred"],
                          time.monotonic() - started, max(attempts for _, attempts in results))


class RsyncDaemon:
    name = "rsyncd"

    def __init__(self) -> None:
        self._secrets: dict[str, str] = {}

    def unsupported_reason(self, runtime: Runtime, request: TransferRequest,
                           snapshot_backend: str) -> str | None:
        for server in (request.source, request.target):
            if remote.missing_tools(runtime.executor(server), ["rsync"]):
                return f"rsync is not installed on {server}"
        return None

    def prepare(self, runtime: Runtime, request: TransferRequest) -> ServerHandle:
        state_dir = runtime.config.transfer.state_dir
        workdir = f"{state_dir}/{request.job_id}-rsyncd"
        return ServerHandle(self.name, request.source, {
            "workdir": workdir,
            "pid_file": f"{workdir}/rsyncd.pid",
            "target": request.target,
            "password_dir": f"{state_dir}/{request.job_id}-pull",
            "password_file": f"{state_dir}/{request.job_id}-pull/rsync.pass",
            "user": "hc" + re.sub(r"[^a-z0-9]", "", request.job_id.lower())[-12:],
            "port": 0,
            "job_id": request.job_id,
        })

    def _config(self, request: TransferRequest, handle: ServerHandle, port: int,
                connections: int) -> str:
        workdir = handle.params["workdir"]
        excludes = " ".join(request.excludes)
        return "\n".join([
            f"pid file = {workdir}/rsyncd.pid",
            f"log file = {workdir}/rsyncd.log",
            f"address = {request.source_address}",
            f"port = {port}",
            "use chroot = no",
            f"max connections = {connections}",
            "reverse lookup = no",
            f"[{MODULE}]",
            f"    path = {request.source_path}",
            "    read only = yes",
            "    write only = no",
            "    list = no",
            "    uid = root",
            "    gid = root",
            f"    auth users = {handle.params['user']}",
            f"    secrets file = {workdir}/secrets",
            "    strict modes = yes",
            f"    hosts allow = {request.target_address}",
            "    hosts deny = *",
            "    timeout = 300",
            f"    exclude = {excludes}",
            # The daemon runs as root without a chroot: a client option that follows
            # symlinks would send whatever a link in the datadir points at (/etc/shadow).
            f"    refuse options = {' '.join(REFUSED_OPTIONS)}",
            "",
        ])

    def serve(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle) -> None:
        executor = runtime.executor(request.source)
        workdir = handle.params["workdir"]
        secret = secrets.token_urlsafe(24)
        self._secrets[request.job_id] = secret
        private_directory(executor, workdir)
        executor.write_file(f"{workdir}/secrets", f"{handle.params['user']}:{secret}\n".encode())
        low, high = runtime.config.transfer.port_range
        connections = max(8, runtime.config.transfer.parallel + 2)
        for port in candidate_ports(executor, (low, high)):
            executor.write_file(f"{workdir}/rsyncd.conf",
                                self._config(request, handle, port, connections).encode(),
                                mode=0o600)
            executor.run(["rm", "-f", f"{workdir}/rsyncd.log", f"{workdir}/rsyncd.pid"])
            executor.run(["rsync", "--daemon", f"--config={workdir}/rsyncd.conf"])
            if self._started(executor, workdir):
                handle.params["port"] = port
                log.info("rsync daemon on %s:%d serving %s", request.source_address, port,
                         request.source_path)
                return
        raise HotcopyError(f"could not start an rsync daemon on {executor.name} "
                           f"(ports {low}-{high}): {self._log_tail(executor, workdir)}")

    def _started(self, executor: Executor, workdir: str) -> bool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            log_text = self._log_tail(executor, workdir)
            if "bind() failed" in log_text or "error" in log_text.lower():
                return False
            pid = executor.run(["cat", f"{workdir}/rsyncd.pid"], check=False).stdout.strip()
            if pid.isdigit() and process_alive(executor, int(pid)):
                return True
            time.sleep(0.05)
        return False

    def _log_tail(self, executor: Executor, workdir: str) -> str:
        return executor.run(["tail", "-n", "5", f"{workdir}/rsyncd.log"], check=False).stdout

    def pull(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle,
             on_progress: ProgressCallback) -> TransferResult:
        executor = runtime.executor(request.target)
        password_file = handle.params["password_file"]
        private_directory(executor, handle.params["password_dir"])
        executor.write_file(password_file, (self._secrets[request.job_id] + "\n").encode())
        url = (f"rsync://{handle.params['user']}@{_url_host(request.source_address)}:"
               f"{handle.params['port']}/{MODULE}/")
        transfer = runtime.config.transfer
        # --inplace: what arrived stays in its file even when rsync dies hard (SIGKILL, a
        # reboot), where --partial alone leaves a temporary file that the next run
        # deletes; a resumed pull then ships only the rest (delta against that file).
        base = ["rsync", "-a", "--numeric-ids", "--partial", "--inplace",
                "--info=progress2,stats2",
                f"--timeout={transfer.io_timeout_s}", f"--contimeout={transfer.connect_timeout_s}",
                f"--password-file={password_file}"]
        try:
            lists = write_lists(runtime, request, handle.params["password_dir"])
            return run_clients(executor, request, client_commands(base, request, url, lists),
                               on_progress, stall_timeout_s=transfer.io_timeout_s)
        except CommandError as exc:
            if NO_SPACE in exc.stderr:
                raise disk_full(runtime, request) from exc
            raise
        finally:
            executor.run(["rm", "-rf", "--", handle.params["password_dir"]], check=False)

    def stop(self, runtime: Runtime, handle: ServerHandle) -> None:
        stop_daemon(runtime, handle.server, handle.params)


METHOD = RsyncDaemon()

NO_SPACE = "No space left on device"


def disk_full(runtime: Runtime, request: TransferRequest) -> HotcopyError:
    """ENOSPC mid-transfer: say which filesystem, how much the copy needs, what to do."""
    free = runtime.executor(request.target).run(
        ["df", "-B1", "--output=avail", request.destination], check=False).stdout.split()
    left = f"{int(free[-1]) / 1e6:.0f} MB free" if free and free[-1].isdigit() else "full"
    need = f", the copy needs {request.expected_bytes / 1e6:.0f} MB" \
        if request.expected_bytes else ""
    return HotcopyError(
        f"the target's filesystem filled up during the transfer ({request.destination} on "
        f"{request.target}: {left}{need})",
        hint="something else wrote to that filesystem after the preflight check; free space "
             "there, then clone again")


def stop_daemon(runtime: Runtime, server: str, params: Mapping[str, Any]) -> None:
    executor = runtime.executor(server)
    pid = executor.run(["cat", params["pid_file"]], check=False).stdout.strip()
    if pid.isdigit():
        terminate_process(executor, int(pid))  # and the transfers it forked
    executor.run(["rm", "-rf", "--", params["workdir"]])
    target = params.get("target")
    if target:
        if params.get("job_id"):
            kill_marked(runtime.executor(target), params["job_id"])  # clients of a dead run
        runtime.executor(target).run(["rm", "-rf", "--", params["password_dir"]], check=False)


@undo_action("transfer.rsyncd.stop",
             describe="stop the rsync daemon and remove its secret ({workdir}) on {server}")
def _undo_stop(runtime: Runtime, params: Mapping[str, Any]) -> None:
    stop_daemon(runtime, params["server"], params)
