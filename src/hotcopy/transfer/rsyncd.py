"""rsync daemon on the source, pulled by rsync on the target.

The daemon lives only for one job: its own port, a per-job user and one-time secret
(file 0600, removed afterwards), bound to the source's address, ``hosts allow`` the
target alone, one read-only module rooted at the snapshot, with the excluded files
hidden on the serving side so they cannot be fetched at all. The secret never touches
argv or the journal; the client reads it from a 0600 file that is removed afterwards.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

from hotcopy.errors import CommandError, HotcopyError
from hotcopy.hosts import Executor
from hotcopy.hosts.processes import process_alive, terminate_process
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action
from hotcopy.transfer.base import (
    ProgressCallback,
    ServerHandle,
    TransferRequest,
    TransferResult,
    parse_int,
)

log = logging.getLogger(__name__)

MODULE = "hotcopy"
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


def _used_ports(executor: Executor) -> set[int]:
    out = executor.run(["ss", "-Htln"], check=False).stdout
    ports = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            port = fields[3].rsplit(":", 1)[-1]
            if port.isdigit():
                ports.add(int(port))
    return ports


class RsyncDaemon:
    name = "rsyncd"

    def __init__(self) -> None:
        self._secrets: dict[str, str] = {}

    def unsupported_reason(self, runtime: Runtime, request: TransferRequest,
                           snapshot_backend: str) -> str | None:
        for server in (request.source, request.target):
            if not runtime.executor(server).run(["sh", "-c", "command -v rsync"],
                                                check=False).ok:
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
        })

    def _config(self, request: TransferRequest, handle: ServerHandle, port: int) -> str:
        workdir = handle.params["workdir"]
        excludes = " ".join(request.excludes)
        return "\n".join([
            f"pid file = {workdir}/rsyncd.pid",
            f"log file = {workdir}/rsyncd.log",
            f"address = {request.source_address}",
            f"port = {port}",
            "use chroot = no",
            "max connections = 8",
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
        used = _used_ports(executor)
        candidates = [p for p in range(low, high + 1) if p not in used]
        random.shuffle(candidates)
        for port in candidates[:5]:
            executor.write_file(f"{workdir}/rsyncd.conf",
                                self._config(request, handle, port).encode(), mode=0o600)
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
        argv = ["rsync", "-a", "--numeric-ids", "--delete", "--partial", "--no-inc-recursive",
                "--info=progress2,stats2", "--timeout=60", "--contimeout=20",
                f"--password-file={password_file}"]
        if request.bwlimit_kbps:
            argv.append(f"--bwlimit={request.bwlimit_kbps}")
        argv += [url, request.destination.rstrip("/") + "/"]
        started = time.monotonic()
        totals = {"Total bytes received": 0, "Literal data": 0,
                  "Number of regular files transferred": 0}

        def on_line(line: str) -> None:
            parsed = parse_progress(line)
            if parsed is not None:
                on_progress(parsed[0], request.expected_bytes, parsed[1])

        try:
            for attempt in range(1, request.retries + 2):
                try:
                    result = executor.stream(argv, on_line, timeout=request.timeout_s)
                except CommandError as exc:
                    if exc.returncode not in RETRYABLE or attempt > request.retries:
                        raise
                    delay = min(2 ** attempt, 30)
                    log.warning("transfer interrupted (rsync exit %s); retry %d of %d in %ds",
                                exc.returncode, attempt, request.retries, delay)
                    time.sleep(delay)
                    continue
                for key, value in parse_stats(result.stdout).items():
                    if key in totals:
                        totals[key] += value
                return TransferResult(totals["Total bytes received"], totals["Literal data"],
                                      totals["Number of regular files transferred"],
                                      time.monotonic() - started, attempt)
        finally:
            executor.run(["rm", "-rf", "--", handle.params["password_dir"]], check=False)
        raise AssertionError("unreachable")

    def stop(self, runtime: Runtime, handle: ServerHandle) -> None:
        stop_daemon(runtime, handle.server, handle.params)


METHOD = RsyncDaemon()


def stop_daemon(runtime: Runtime, server: str, params: Mapping[str, Any]) -> None:
    executor = runtime.executor(server)
    pid = executor.run(["cat", params["pid_file"]], check=False).stdout.strip()
    if pid.isdigit():
        terminate_process(executor, int(pid))  # and the transfers it forked
    executor.run(["rm", "-rf", "--", params["workdir"]])
    target = params.get("target")
    if target:
        runtime.executor(target).run(["rm", "-rf", "--", params["password_dir"]], check=False)


@undo_action("transfer.rsyncd.stop",
             describe="stop the rsync daemon and remove its secret ({workdir}) on {server}")
def _undo_stop(runtime: Runtime, params: Mapping[str, Any]) -> None:
    stop_daemon(runtime, params["server"], params)
