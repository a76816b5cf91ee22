"""zfs send on the source, piped over TCP (socat) into zfs recv on the target.

The target listens (``serve``): one socat for one connection, on a port picked for the
job, bound to the target's address and accepting only the source's; the first line of
the stream must be a one-time token (in 0600 files on both hosts, never in argv or the
journal) before a byte reaches ``zfs recv``. The source sends (``pull``), so the data
goes from source to target directly; the controller only reads dd's progress lines.

The stream becomes the staging dataset (the target's staging directory must be a
dataset's mountpoint, see snapshot.zfs.create_dataset_like): a full stream is received
under that dataset's name after the empty one is destroyed (zfs-fuse often fails a
forced ``recv -F`` into an existing dataset with "I/O error", never a receive into a new
name), then mounted at the staging path. When the source dataset and the target's
current datadir dataset share a snapshot (same guid), the staging dataset is re-made as
a clone of it and promoted, and only the difference travels (``send -i``, ``recv -F``).

Not resumable: zfs-fuse (pool version 23) has neither ``zfs recv -s`` nor the
``receive_resume_token`` property, so a failed stream is sent again from the start, up
to ``transfer.retries`` times. Quirk worth knowing: killing the ``zfs recv`` client does
not stop a zfs-fuse receive (the daemon keeps reading the pipe); the writer end must
close, which is why ``stop`` ends every process of the job on both hosts (they all carry
the job's HOTCOPY_TRANSFER marker), socat included.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

from hotcopy import remote
from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action
from hotcopy.snapshot import zfs
from hotcopy.transfer.base import (
    ProgressCallback,
    ServerHandle,
    TransferRequest,
    TransferResult,
    candidate_ports,
    kill_marked,
    marker,
    retry_delay,
    used_ports,
)
from hotcopy.transfer.rsyncd import private_directory
from hotcopy.transfer.stream import resolve

log = logging.getLogger(__name__)

TOKEN_BYTES = 16
TOKEN_LINE = TOKEN_BYTES * 2 + 1  # hex digits and a newline, ahead of the stream
LISTEN_TIMEOUT_S = 5
_DD_PROGRESS = re.compile(r"^(\d+) bytes\b.*copied, ([\d.]+) s")


class ReceiveFailed(HotcopyError):
    pass


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def listen_address(address: str, peer: str, port: int) -> str:
    """One connection only (no fork), from the source's address only."""
    family, prefix = ("6", 128) if ":" in peer else ("4", 32)
    return (f"TCP{family}-LISTEN:{port},bind={_bracket(address)},"
            f"range={_bracket(peer)}/{prefix},reuseaddr")


def connect_address(address: str, peer: str, port: int, timeout_s: int) -> str:
    """Bound to the source's own address, the one the listener's range admits."""
    family = "6" if ":" in peer else "4"
    return (f"TCP{family}:{_bracket(address)}:{port},bind={_bracket(peer)},"
            f"connect-timeout={timeout_s}")


def source_snapshot(executor: Executor, exposed: str) -> tuple[str, str]:
    """(snapshot, datadir path relative to the dataset) behind an exposed ZFS clone."""
    mount = zfs.dataset_holding(executor, exposed)
    if mount is None:
        raise HotcopyError(f"{exposed} on {executor.name} is not on a ZFS clone")
    snapshot = zfs.origin(executor, mount.source)
    if not snapshot:
        raise HotcopyError(f"{mount.source} on {executor.name} is not a clone of a snapshot")
    return snapshot, os.path.relpath(exposed, mount.target)


def common_base(source: Executor, snapshot: str, target: Executor,
                target_dataset: str) -> tuple[str, str] | None:
    """The newest snapshot of the source dataset that the target dataset also holds."""
    dataset = snapshot.partition("@")[0]
    theirs = {guid: name for name, guid in zfs.snapshot_guids(target, target_dataset)}
    for name, guid in reversed(zfs.snapshot_guids(source, dataset)):
        if name != snapshot and guid in theirs:
            return name, theirs[guid]
    return None


class ZfsSend:
    name = "zfs_send"

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def unsupported_reason(self, runtime: Runtime, request: TransferRequest,
                           snapshot_backend: str) -> str | None:
        if snapshot_backend != "zfs":
            return f"the source snapshot is a {snapshot_backend} snapshot, not a ZFS one"
        missing = _missing_tools(runtime, request)
        if missing:
            return missing
        try:
            _, rel = source_snapshot(runtime.executor(request.source), request.source_path)
        except HotcopyError as exc:
            return exc.message
        if rel != ".":
            return (f"the source datadir is {rel} inside its dataset; zfs send ships whole "
                    "datasets, so the datadir must be a dataset's mountpoint")
        if zfs.dataset_with_mountpoint(runtime.executor(request.target),
                                       request.destination) is None:
            return (f"the target's staging directory {request.destination} is not a ZFS "
                    "dataset (the target's datadir must be a dataset's mountpoint)")
        return None

    def prepare(self, runtime: Runtime, request: TransferRequest) -> ServerHandle:
        """Names only; the staging dataset's name goes into the stop undo's parameters."""
        state_dir = runtime.config.transfer.state_dir
        dataset = zfs.dataset_with_mountpoint(runtime.executor(request.target),
                                              request.destination)
        return ServerHandle(self.name, request.target, {
            "job_id": request.job_id, "source": request.source, "target": request.target,
            "send_dir": f"{state_dir}/{request.job_id}-zfssend",
            "recv_dir": f"{state_dir}/{request.job_id}-zfsrecv",
            "staging": request.destination, "dataset": dataset or "", "port": 0,
        })

    def serve(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle) -> None:
        source, target = runtime.executor(request.source), runtime.executor(request.target)
        if not handle.params["dataset"]:
            raise HotcopyError(f"{request.destination} on {target.name} is not a dataset")
        snapshot, _ = source_snapshot(source, request.source_path)
        handle.params["snapshot"] = snapshot
        handle.params["base"] = self._incremental_base(runtime, request, handle) or ""
        self._arm(runtime, request, handle)

    def _incremental_base(self, runtime: Runtime, request: TransferRequest,
                          handle: ServerHandle) -> str | None:
        """Re-make the staging dataset as a clone of a shared snapshot, if there is one."""
        target = runtime.executor(request.target)
        dataset = handle.params["dataset"]
        current = zfs.dataset_mounted_at(target, runtime.config.server(request.target).datadir)
        shared = None if current is None else common_base(
            runtime.executor(request.source), handle.params["snapshot"], target, current)
        if current is None or shared is None:
            return None
        source_base, target_base = shared
        if zfs.origin(target, current) == f"{dataset}@{target_base.partition('@')[2]}":
            return source_base  # made so before a resume
        if not zfs.exists(target, dataset) or zfs.origin(target, dataset) != target_base:
            zfs.destroy_dataset(target, dataset)  # the empty one prepare_target made
            target.run(["zfs", "clone", "-o", f"mountpoint={request.destination}",
                        target_base, dataset])
        # The staging dataset takes the shared snapshot over (the current datadir becomes
        # its clone), so that the increment can be received into it.
        target.run(["zfs", "promote", dataset])
        return source_base

    def _arm(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle) -> None:
        """A fresh token and listener; for a full stream, no dataset in the way."""
        target = runtime.executor(request.target)
        params = handle.params
        workdir, dataset = params["recv_dir"], params["dataset"]
        if not params["base"]:
            zfs.destroy_dataset(target, dataset)
        # Again after a resume: a receive that completed before the crash left its snapshot.
        zfs.destroy(target, f"{dataset}@{params['snapshot'].partition('@')[2]}")
        private_directory(target, workdir)
        token = secrets.token_hex(TOKEN_BYTES)
        self._tokens[request.job_id] = token
        target.write_file(f"{workdir}/token", (token + "\n").encode())
        peer = resolve(target, request.source_address)
        force = "-F" if params["base"] else ""
        for port in candidate_ports(target, runtime.config.transfer.port_range):
            listen = listen_address(request.target_address, peer, port)
            target.run(["env", marker(request.job_id), "setsid", "-f",
                        *remote.argv("zfs_recv_listener.sh", workdir, listen, dataset, force,
                                     str(runtime.config.transfer.io_timeout_s))])
            if self._listening(target, workdir, port):
                params["port"] = port
                log.info("zfs recv into %s listening on %s:%d%s", dataset,
                         request.target_address, port,
                         f" (incremental from {params['base']})" if params["base"] else "")
                return
            kill_marked(target, request.job_id)
            target.run(["rm", "-f", f"{workdir}/socat.err", f"{workdir}/status"])
        raise HotcopyError(f"could not start a socat listener on {target.name} (ports "
                           f"{runtime.config.transfer.port_range}): "
                           f"{_tail(target, f'{workdir}/socat.err')}")

    def _listening(self, executor: Executor, workdir: str, port: int) -> bool:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while time.monotonic() < deadline:
            if port in used_ports(executor):
                return True
            if _tail(executor, f"{workdir}/socat.err") or executor.exists(f"{workdir}/status"):
                return False
            time.sleep(0.05)
        return False

    def pull(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle,
             on_progress: ProgressCallback) -> TransferResult:
        """Send, wait for the receive; a failed stream is sent again from the start."""
        started = time.monotonic()
        for attempt in range(1, request.retries + 2):
            try:
                sent = self._send_once(runtime, request, handle, on_progress)
                break
            except ReceiveFailed as exc:
                if attempt > request.retries:
                    raise
                log.warning("%s; sending again from the start (attempt %d of %d)",
                            exc.message, attempt + 1, request.retries + 1)
                stop_ends(runtime, handle.params, keep_dataset=True)
                time.sleep(retry_delay(attempt))
                request.before_retry(attempt + 1)
                self._arm(runtime, request, handle)
        target = runtime.executor(request.target)
        self._settle(target, handle.params)
        files = target.run(["find", request.destination, "-xdev", "-type", "f", "-printf", "."],
                           timeout=600).stdout
        return TransferResult(sent, sent, len(files), time.monotonic() - started, attempt)

    def _send_once(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle,
                   on_progress: ProgressCallback) -> int:
        source, target = runtime.executor(request.source), runtime.executor(request.target)
        params = handle.params
        workdir = params["send_dir"]
        token = self._tokens.get(request.job_id)
        if token is None:
            raise HotcopyError("the transfer's token is gone (new process): serve again")
        expected = None if params["base"] else _referenced(source, params["snapshot"])
        started = time.monotonic()
        sent = 0

        def on_line(line: str) -> None:
            nonlocal sent
            match = _DD_PROGRESS.match(line.strip())
            if match:
                sent = max(0, int(match.group(1)) - TOKEN_LINE)
                elapsed = time.monotonic() - started
                on_progress(sent, expected, sent / elapsed if elapsed > 0 else None)

        private_directory(source, workdir)
        try:
            source.write_file(f"{workdir}/token", (token + "\n").encode())
            settings = runtime.config.transfer
            connect = connect_address(request.target_address,
                                      resolve(target, request.source_address),
                                      int(params["port"]), settings.connect_timeout_s)
            result = source.stream(["env", marker(request.job_id),
                                    *remote.argv("zfs_send_stream.sh", workdir, connect,
                                                 params["snapshot"], params["base"],
                                                 str(request.bwlimit_kbps or ""),
                                                 str(settings.io_timeout_s), interpreter="bash")],
                                   on_line, timeout=request.timeout_s, check=False)
            if not result.ok:
                why = " ".join(filter(None, (
                    _tail(source, f"{workdir}/send.err"), _tail(source, f"{workdir}/socat.err"),
                    _tail(target, f"{params['recv_dir']}/recv.err"))))
                raise ReceiveFailed(f"zfs send from {source.name} failed (exit "
                                    f"{result.returncode}): {why}")
        finally:
            source.run(["rm", "-rf", "--", workdir], check=False)
        self._await_receive(target, request.job_id, params["recv_dir"], request.timeout_s)
        return sent

    def _await_receive(self, target: Executor, job_id: str, workdir: str,
                       timeout_s: float) -> None:
        """The sender is done when its bytes are sent; the receive may still be writing."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = target.run(["cat", f"{workdir}/status"], check=False)
            if status.ok and status.stdout.strip():
                if status.stdout.strip() == "0":
                    return
                raise ReceiveFailed(f"zfs recv on {target.name} failed: "
                                    f"{_tail(target, f'{workdir}/recv.err')}")
            if not _listener_alive(target, job_id) and not target.exists(f"{workdir}/status"):
                raise ReceiveFailed(f"the zfs recv listener on {target.name} ended without a "
                                    f"result: {_tail(target, f'{workdir}/socat.err')}")
            time.sleep(0.2)
        raise HotcopyError(f"zfs recv on {target.name} did not finish in {timeout_s:.0f}s")

    def _settle(self, target: Executor, params: Mapping[str, Any]) -> None:
        """Mounted at the staging path, without the snapshot that came along."""
        dataset, staging = params["dataset"], params["staging"]
        if zfs.mountpoint(target, dataset) != staging:
            target.run(["zfs", "set", f"mountpoint={staging}", dataset])
        if zfs.dataset_mounted_at(target, staging) != dataset:
            target.run(["zfs", "mount", dataset])
        zfs.destroy(target, f"{dataset}@{params['snapshot'].partition('@')[2]}")

    def stop(self, runtime: Runtime, handle: ServerHandle) -> None:
        stop_ends(runtime, handle.params)


METHOD = ZfsSend()


def _missing_tools(runtime: Runtime, request: TransferRequest) -> str | None:
    needs = {request.source: ["zfs", "socat", "dd", *(["pv"] if request.bwlimit_kbps else [])],
             request.target: ["zfs", "socat", "setsid"]}
    for server, tools in needs.items():
        missing = remote.missing_tools(runtime.executor(server), tools)
        if missing:
            return f"{', '.join(missing)} not installed on {server}"
    return None


def _referenced(executor: Executor, snapshot: str) -> int | None:
    value = executor.run(["zfs", "get", "-Hp", "-o", "value", "referenced", snapshot],
                         check=False).stdout.strip()
    return int(value) if value.isdigit() else None


def _tail(executor: Executor, path: str) -> str:
    return executor.run(["tail", "-n", "3", path], check=False).stdout.strip()


def _listener_alive(executor: Executor, job_id: str) -> bool:
    """Any process of the job's receiving end (they carry the job's marker) still there."""
    return executor.run(remote.argv("marked_alive.sh", marker(job_id)), check=False).ok


def stop_ends(runtime: Runtime, params: Mapping[str, Any], *,
              keep_dataset: bool = False) -> None:
    """Every process of the job on both ends, their token directories, and a received
    dataset not yet mounted at the staging path; idempotent.

    Ending the listener's socat closes the pipe into ``zfs recv``, which is what makes a
    zfs-fuse daemon abandon a receive. Once mounted at the staging path, the dataset is
    the staging directory's, and the staging undo removes it.
    """
    for server, workdir in ((params["target"], params["recv_dir"]),
                            (params["source"], params["send_dir"])):
        executor = runtime.executor(server)
        kill_marked(executor, params["job_id"])
        executor.run(["rm", "-rf", "--", workdir])
    target = runtime.executor(params["target"])
    dataset = params.get("dataset")
    # A received dataset is the staging directory's once mounted there, and the target's
    # datadir once swapped in (the snapshot may be dropped after the swap): never ours then.
    owned_elsewhere = {params["staging"], runtime.config.server(params["target"]).datadir}
    if not keep_dataset and dataset and zfs.exists(target, dataset) \
            and zfs.mountpoint(target, dataset) not in owned_elsewhere:
        zfs.destroy_dataset(target, dataset)


@undo_action("transfer.zfs_send.stop",
             describe="stop zfs send on {source} and zfs recv on {target}, remove their tokens")
def _undo_stop(runtime: Runtime, params: Mapping[str, Any]) -> None:
    stop_ends(runtime, params)
