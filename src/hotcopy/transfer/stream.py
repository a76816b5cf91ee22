"""tar + zstd over one-time TCP streams: the target listens, the source sends.

For hosts where neither an rsync daemon nor ssh between them is wanted: the target runs
a socat listener for this job alone, bound to the target's address, on a random port of
``transfer.port_range``, accepting connections from the source's address only (socat
``range=``). Every connection must open with a header carrying a one-time token (a
0600 file on both hosts, never in argv or the journal) before a byte is extracted, so a
stranger who connects first cannot inject files; each stream is accepted once. The
source sends ``tar -c`` of exactly the files rsync would ship (hotcopy applies the same
excludes to its own file list) through ``pv`` (progress), ``zstd -T0`` and ``pv -L``
(``transfer.bwlimit_kbps``, counted on the compressed bytes the network carries; without
pv on the source, progress comes from tar's checkpoints and a limit is refused); the
receiver answers ``HOTCOPY-OK`` only once tar has extracted it all. With
``transfer.parallel`` > 1 the file list is split into groups of about equal size, one
stream each, and the limit is shared among them.

Not resumable: a tar stream cannot skip what already arrived. A retry (and a resumed
job) stops everything, empties the staging directory, starts a new listener with a
new port and token, and sends it all again.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from hotcopy import remote
from hotcopy.config import is_ip_address
from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor
from hotcopy.hosts.processes import process_alive
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action
from hotcopy.transfer.base import (
    FileEntry,
    ProgressCallback,
    ProgressMeter,
    ServerHandle,
    TransferRequest,
    TransferResult,
    candidate_ports,
    empty_directory,
    encode_list,
    kill_marked,
    list_tree,
    marker,
    retry_delay,
    run_parallel,
    shippable,
    split_balanced,
    unless_deposed,
)
from hotcopy.transfer.rsyncd import private_directory

log = logging.getLogger(__name__)

#: The pace of a stream the throttle has not slowed (bytes/s): more than any link.
UNPACED = 10**12
# tar's record, and socat's buffer: 128 KiB, as the benchmark's tar|tar floor uses (with
# 10 KiB both tars were CPU-bound there). The stream's own 89-97 MB/s in the benchmark
# came from zstd -3, not from these: uncompressed it moved 274-359 MB/s at 1 GB.
RECORD_BLOCKS = 256
TAR_RECORD = RECORD_BLOCKS * 512
SOCKET_BUFFER = TAR_RECORD
CHECKPOINT_RECORDS = 8  # a progress line every MiB


class StreamFailed(HotcopyError):
    pass


class SenderFailed(HotcopyError):
    """The source could not read what it sent: not retried, a second read fails alike."""


def tar_size(entries: Sequence[FileEntry]) -> int:
    """Bytes of the tar stream GNU tar writes for these entries (what pv counts)."""
    blocks = 2  # the end-of-archive marker
    for entry in entries:
        name = len(entry.path.encode()) + (1 if entry.is_dir else 0)
        blocks += 1 + (1 + -(-(name + 1) // 512) if name > 99 else 0)
        blocks += -(-entry.size // 512)
    return -(-blocks * 512 // TAR_RECORD) * TAR_RECORD


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def listen_address(address: str, peer: str, port: int, children: int) -> str:
    family, prefix = ("6", 128) if ":" in peer else ("4", 32)
    return (f"TCP{family}-LISTEN:{port},bind={_bracket(address)},"
            f"range={_bracket(peer)}/{prefix},reuseaddr,fork,max-children={children}")


def connect_address(address: str, peer: str, port: int, timeout_s: int) -> str:
    family = "6" if ":" in peer else "4"
    return (f"TCP{family}:{_bracket(address)}:{port},bind={_bracket(peer)},"
            f"connect-timeout={timeout_s}")


def spawn_listener(executor: Executor, workdir: str, listen: str, job_id: str,
                   io_timeout_s: int) -> int | None:
    """Start socat on LISTEN, each connection handed to ``WORKDIR/receive.sh``; its pid.

    ``-t``: once the sender's last byte has arrived, socat must wait for the receiver's
    answer, which comes only after the extraction has caught up with everything still
    buffered. socat's default (0.5 s) closes the connection before a slow disk gets
    there, and the sender sees the stream end with no answer. ``-T``: a connection idle
    that long is given up.
    """
    pid = executor.run(remote.argv(
        "spawn.sh", "env", marker(job_id), "socat", "-d", "-d", "-lf", f"{workdir}/socat.log",
        "-b", str(SOCKET_BUFFER), "-T", str(io_timeout_s), "-t", str(io_timeout_s), listen,
        f"EXEC:bash {workdir}/receive.sh",
    )).stdout.strip()
    return int(pid) if pid.isdigit() else None


def listening(executor: Executor, port: int, pid: int) -> bool:
    """Whether the listener PID is up and something listens on PORT (5 s at most)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not process_alive(executor, pid):
            return False
        if executor.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout.strip():
            return process_alive(executor, pid)
        time.sleep(0.05)
    return False


def resolve(executor: Executor, address: str) -> str:
    """The IP the target will see the source connect from (socat's range needs one)."""
    if is_ip_address(address):
        return address
    out = executor.run(["getent", "ahosts", address], check=False).stdout.split()
    if not out:
        raise HotcopyError(f"{executor.name} cannot resolve {address}")
    return out[0]


class StreamMethod:
    name = "stream"

    def unsupported_reason(self, runtime: Runtime, request: TransferRequest,
                           snapshot_backend: str) -> str | None:
        compress = ["zstd"] if runtime.config.transfer.zstd_level > 0 else []
        needs = {request.source: ["bash", "tar", "socat", "find", *compress],
                 request.target: ["bash", "tar", "socat", "setsid", "ss", *compress]}
        for server, tools in needs.items():
            missing = remote.missing_tools(runtime.executor(server), tools)
            if missing:
                return f"{', '.join(missing)} not installed on {server}"
        paced = request.bwlimit_kbps or runtime.config.transfer.max_source_latency_factor
        if paced and remote.missing_tools(runtime.executor(request.source), ["pv"]):
            setting = ("transfer.bwlimit_kbps" if request.bwlimit_kbps
                       else "transfer.max_source_latency_factor")
            return (f"{setting} needs pv on {request.source} to pace a stream, and it is "
                    "not installed")
        return None

    def prepare(self, runtime: Runtime, request: TransferRequest) -> ServerHandle:
        state_dir = runtime.config.transfer.state_dir
        return ServerHandle(self.name, request.target, {
            "workdir": f"{state_dir}/{request.job_id}-stream",
            "source": request.source,
            "source_workdir": f"{state_dir}/{request.job_id}-stream-send",
            "job_id": request.job_id,
            "port": 0,
        })

    def serve(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle) -> None:
        source = runtime.executor(request.source)
        private_directory(source, handle.params["source_workdir"])
        source.write_file(f"{handle.params['source_workdir']}/send.sh",
                          remote.script("stream_sender.sh").encode(), mode=0o700)
        self._listen(runtime, request, handle)

    def _listen(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle) -> None:
        """A fresh listener: new directory, new token on both ends, new random port."""
        target, source = runtime.executor(request.target), runtime.executor(request.source)
        workdir = handle.params["workdir"]
        private_directory(target, workdir)
        token = secrets.token_hex(32).encode()
        target.write_file(f"{workdir}/token", token)
        source.write_file(f"{handle.params['source_workdir']}/token", token)
        target.write_file(f"{workdir}/receive.sh", remote.script("stream_receiver.sh").encode(),
                          mode=0o700)
        target.write_file(f"{workdir}/staging", request.destination.encode())
        target.write_file(f"{workdir}/record_blocks", str(RECORD_BLOCKS).encode())
        peer = resolve(target, request.source_address)
        handle.params["peer"] = peer
        children = runtime.config.transfer.parallel + 4
        for port in candidate_ports(target, runtime.config.transfer.port_range):
            listen = listen_address(request.target_address, peer, port, children)
            pid = spawn_listener(target, workdir, listen, request.job_id,
                                 runtime.config.transfer.io_timeout_s)
            if pid is not None and listening(target, port, pid):
                handle.params["port"] = port
                log.info("stream listener on %s:%d for %s", request.target_address, port, peer)
                return
            kill_marked(target, request.job_id)
        tail = target.run(["tail", "-n", "3", f"{workdir}/socat.log"], check=False).stdout
        raise HotcopyError(f"could not start a stream listener on {target.name} (ports "
                           f"{runtime.config.transfer.port_range}): {tail.strip()}")

    def pull(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle,
             on_progress: ProgressCallback) -> TransferResult:
        source, target = runtime.executor(request.source), runtime.executor(request.target)
        entries = shippable(list_tree(source, request.source_path), request.excludes)
        groups = split_balanced(entries, runtime.config.transfer.parallel)
        for index, group in enumerate(groups):
            source.write_file(f"{handle.params['source_workdir']}/files-{index}",
                              encode_list(group))
        meter = ProgressMeter(on_progress, sum(tar_size(group) for group in groups))
        started = time.monotonic()
        for attempt in range(1, request.retries + 2):
            if attempt > 1:
                self._listen(runtime, request, handle)
            empty_directory(target, request.destination)  # never extract over a partial run
            meter.reset()
            try:
                sent = self._send_all(runtime, request, handle, groups, meter)
            except StreamFailed as exc:
                if attempt > request.retries:
                    raise
                delay = retry_delay(attempt)
                log.warning("%s; starting over (retry %d of %d) in %.0fs", exc.message,
                            attempt, request.retries, delay)
                time.sleep(delay)
                request.before_retry(attempt + 1)
                continue
            files = sum(1 for entry in entries if not entry.is_dir)
            return TransferResult(sum(sent), sum(entry.size for entry in entries), files,
                                  time.monotonic() - started, attempt)
        raise AssertionError("unreachable")

    def _send_all(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle,
                  groups: list[list[FileEntry]], meter: ProgressMeter) -> list[int]:
        transfer = runtime.config.transfer
        source, target = runtime.executor(request.source), runtime.executor(request.target)
        meter_kind = "tar" if remote.missing_tools(source, ["pv"]) else "pv"
        limit = (request.bwlimit_kbps or 0) * 1024 // len(groups)
        if not limit and transfer.max_source_latency_factor:
            limit = UNPACED  # a pacing pv in every stream, for the throttle to set
        handle.params["streams"] = len(groups)
        connect = connect_address(request.target_address, handle.params["peer"],
                                  handle.params["port"], transfer.connect_timeout_s)
        sender = f"{handle.params['source_workdir']}/send.sh"

        def send(index: int, cancelled: threading.Event) -> int:
            seen: dict[str, Any] = {"bytes": 0, "ok": False, "notes": []}

            def on_line(line: str) -> None:
                text = line.strip()
                if text.isdigit():
                    seen["bytes"] = int(text)
                    meter.update(index, seen["bytes"])
                elif "HOTCOPY-CHECKPOINT" in text:
                    seen["bytes"] = int(text.rsplit(" ", 1)[-1]) * TAR_RECORD
                    meter.update(index, seen["bytes"])
                elif text.startswith("HOTCOPY-OK"):
                    seen["ok"] = True
                elif text:
                    seen["notes"] = [*seen["notes"][-4:], text[-300:]]

            result = source.stream(
                ["env", marker(request.job_id), "bash", sender, str(index), connect,
                 request.source_path, str(transfer.zstd_level), str(limit), meter_kind,
                 str(transfer.io_timeout_s), str(CHECKPOINT_RECORDS), str(RECORD_BLOCKS),
                 str(SOCKET_BUFFER)],
                on_line, timeout=request.timeout_s, check=False)
            if seen["ok"] and result.returncode != 0:
                # The receiver extracted a whole archive, but GNU tar pads a file it could
                # not read (EIO: an overflowed snapshot, a checksum error) with zeros and
                # exits 2: what arrived is not the source's data.
                why = "; ".join(seen["notes"]) or result.stderr.strip()[-300:]
                raise SenderFailed(f"stream {index + 1} of {len(groups)}: the sender on "
                                   f"{request.source} exited {result.returncode} although the "
                                   f"target received the archive, so files in it may be "
                                   f"zero-filled: {why}")
            if not seen["ok"]:
                why = "; ".join(seen["notes"]) or result.stderr.strip()[-300:] or "no answer"
                refused = target.run(["tail", "-n", "2", f"{handle.params['workdir']}/refused"],
                                     check=False).stdout.strip()
                if refused:
                    why += f" (the receiver refused: {refused})"
                raise StreamFailed(f"stream {index + 1} of {len(groups)} to "
                                   f"{request.target} failed (exit {result.returncode}): {why}")
            sent = int(seen["bytes"]) if meter_kind == "pv" else 0
            sent = sent or tar_size(groups[index])
            meter.update(index, sent)
            return sent

        stop_others = unless_deposed(
            request, "stopping the other streams",
            lambda: stop_stream(runtime, {"server": handle.server, **handle.params},
                                keep_files=True))
        return run_parallel([functools.partial(send, i) for i in range(len(groups))],
                            abort=stop_others)

    def set_rate(self, runtime: Runtime, handle: ServerHandle,
                 bytes_per_s: float | None) -> None:
        """Every stream's pacing pv gets its share, through pv's remote control."""
        streams = int(handle.params.get("streams") or runtime.config.transfer.parallel)
        share = UNPACED if bytes_per_s is None else max(1, int(bytes_per_s / streams))
        runtime.executor(handle.params["source"]).run(
            remote.argv("pace.sh", marker(handle.params["job_id"]), str(share)), timeout=30)

    def stop(self, runtime: Runtime, handle: ServerHandle) -> None:
        stop_stream(runtime, {"server": handle.server, **handle.params})


METHOD = StreamMethod()


def stop_stream(runtime: Runtime, params: Mapping[str, Any], *, keep_files: bool = False) -> None:
    """Kill the listener, its receivers and the senders; then remove tokens and lists."""
    ends = ((params["server"], params["workdir"]),
            (params["source"], params["source_workdir"]))
    for server, workdir in ends:
        executor = runtime.executor(server)
        kill_marked(executor, params["job_id"])
        if not keep_files:
            executor.run(["rm", "-rf", "--", workdir])


@undo_action("transfer.stream.stop",
             describe="stop the stream listener on {server} and the senders on {source}, "
                      "remove their tokens ({workdir}, {source_workdir})")
def _undo_stop(runtime: Runtime, params: Mapping[str, Any]) -> None:
    stop_stream(runtime, params)
