"""The transfer method protocol, and the rules for which files travel.

The data always flows from the source host to the target host directly; the machine
running hotcopy only starts the two ends and reads progress.
"""

from __future__ import annotations

import fnmatch
import heapq
import importlib
import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

from hotcopy import remote
from hotcopy.errors import RefusedError
from hotcopy.hosts import Executor
from hotcopy.plugins import import_available
from hotcopy.runtime import Runtime

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int | None, float | None], None]
"""(bytes done, bytes expected, bytes per second)"""

# Files of the source that must not become the target's: its identity, its replication
# state and its logs. Patterns are relative to the datadir; "/" anchors at its top.
STATIC_EXCLUDES = (
    "/auto.cnf",
    "/master.info", "/master-*.info", "/multi-master.info",
    "/relay-log.info", "/relay-log-*.info",
    "/*.pid", "/*.sock", "/*.sock.lock", "/*.err",
    "/.hotcopy-*",
)


def log_excludes(datadir: str, basenames: Iterable[str | None]) -> list[str]:
    """Exclude patterns for binlogs and relay logs whose basename lies in the datadir."""
    patterns: list[str] = []
    for basename in basenames:
        if not basename:
            continue
        path = basename if basename.startswith("/") else os.path.join(datadir, basename)
        rel = os.path.relpath(os.path.normpath(path), os.path.normpath(datadir))
        if rel.startswith(".."):
            continue  # logs live outside the datadir: they are not shipped anyway
        patterns += [f"/{rel}.[0-9]*", f"/{rel}.index", f"/{rel}.state"]
    return patterns


def file_excludes(datadir: str, files: Iterable[str | None]) -> list[str]:
    """Exclude patterns for single files (custom master_info_file, relay_log_info_file,
    log_bin_index, relay_log_index names) that lie in the datadir: the source's own
    replication state must never arrive on the target under a name we did not expect."""
    patterns: list[str] = []
    for name in files:
        if not name:
            continue
        path = name if name.startswith("/") else os.path.join(datadir, name)
        rel = os.path.relpath(os.path.normpath(path), os.path.normpath(datadir))
        if not rel.startswith("..") and rel != ".":
            patterns.append(f"/{rel}")
    return patterns


def is_excluded(relpath: str, patterns: Iterable[str]) -> bool:
    """Match a datadir-relative path the way rsync's anchored patterns do (for sizing)."""
    rel = relpath.lstrip("/")
    for pattern in patterns:
        if pattern.startswith("/"):
            if fnmatch.fnmatchcase(rel, pattern[1:]):
                return True
        elif fnmatch.fnmatchcase(os.path.basename(rel), pattern):
            return True
    return False


@dataclass
class TransferRequest:
    job_id: str
    source: str
    target: str
    source_address: str
    target_address: str
    source_path: str
    destination: str
    excludes: list[str]
    expected_bytes: int | None
    bwlimit_kbps: int | None
    timeout_s: float
    retries: int
    #: Called with the attempt number before a transfer starts again after a failure.
    #: The clone makes it a fenced journal write, so a controller deposed while its
    #: copy was failing stops there instead of restarting processes on the hosts.
    before_retry: Callable[[int], None] = field(default=lambda attempt: None, repr=False,
                                                compare=False)
    #: Asked before the transfer stops its own processes on a host (a stalled stream, the
    #: other streams after a failure): False once this controller was deposed. See
    #: unless_deposed.
    may_act: Callable[[str], bool] = field(default=lambda what: True, repr=False,
                                           compare=False)
    #: A delta re-seed: the destination starts as a snapshot of the target's datadir
    #: (workflows.preflight_delta); rsync must compare every file and delete the rest.
    delta: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items()
                if key not in ("before_retry", "may_act")}


@dataclass
class TransferResult:
    bytes_transferred: int
    literal_bytes: int
    files_transferred: int
    seconds: float
    attempts: int = 1


@dataclass
class ServerHandle:
    """What the journal needs to stop the serving end (no secret in here)."""

    method: str
    server: str
    params: dict[str, Any] = field(default_factory=dict)


class TransferMethod(Protocol):
    """``serve`` starts the passive end, ``pull`` runs the active end until done.

    For rsyncd the source serves and the target pulls; for a push stream the target
    listens (serve) and the source sends (pull). Either way the data goes directly from
    source to target.
    """

    name: str

    def unsupported_reason(self, runtime: Runtime, request: TransferRequest,
                           snapshot_backend: str) -> str | None:
        """None when this method can move this snapshot between these hosts."""
        ...

    def prepare(self, runtime: Runtime, request: TransferRequest) -> ServerHandle:
        """Pick ports and paths, read-only; the caller journals the stop undo next."""
        ...

    def serve(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle) -> None: ...

    def pull(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle,
             on_progress: ProgressCallback) -> TransferResult: ...

    def stop(self, runtime: Runtime, handle: ServerHandle) -> None:
        """Idempotent."""
        ...


class PacedMethod(TransferMethod, Protocol):
    """A method whose running copy can change its rate (the latency throttle needs it)."""

    def set_rate(self, runtime: Runtime, handle: ServerHandle,
                 bytes_per_s: float | None) -> None:
        """The whole copy's rate from now on, shared by its streams; None: unpaced."""
        ...


def pacing_unsupported(runtime: Runtime, method: TransferMethod) -> str | None:
    """Why METHOD cannot serve a clone that the latency throttle must pace, if it cannot."""
    if runtime.config.transfer.max_source_latency_factor is None or hasattr(method, "set_rate"):
        return None
    return ("it cannot change its rate while it runs, which "
            "transfer.max_source_latency_factor needs (the stream method can)")


_SIZE = re.compile(r"^(\d[\d,]*)")


def parse_int(text: str) -> int:
    match = _SIZE.match(text.strip())
    return int(match.group(1).replace(",", "")) if match else 0


# One module per method, in the order ``auto`` prefers them; each module defines METHOD.
METHOD_MODULES: dict[str, str] = {
    "zfs_send": "hotcopy.transfer.zfs_send",
    "rsyncd": "hotcopy.transfer.rsyncd",
    "rsync_ssh": "hotcopy.transfer.rsync_ssh",
    "stream": "hotcopy.transfer.stream",
}


def load_method(name: str) -> TransferMethod:
    method: TransferMethod = importlib.import_module(METHOD_MODULES[name]).METHOD
    return method


def load_all() -> list[str]:
    """Import every method that exists, so a rollback can find every undo action."""
    return import_available(METHOD_MODULES)


def method_for(runtime: Runtime, request: TransferRequest, choice: str,
               snapshot_backend: str) -> TransferMethod:
    """``auto``: the first method, in preference order, that both hosts can use."""
    if choice != "auto":
        method = load_method(choice)
        reason = (pacing_unsupported(runtime, method)
                  or method.unsupported_reason(runtime, request, snapshot_backend))
        if reason is not None:
            raise RefusedError(f"transfer method {choice} cannot be used: {reason}")
        return method
    reasons = []
    for name in load_all():
        method = load_method(name)
        reason = (pacing_unsupported(runtime, method)
                  or method.unsupported_reason(runtime, request, snapshot_backend))
        if reason is None:
            return method
        reasons.append(f"{name}: {reason}")
    raise RefusedError("no transfer method fits these hosts (" + "; ".join(reasons) + ")")


# -- shared by the methods: file lists for parallel streams, progress, process cleanup --

T = TypeVar("T")

# Every process a method starts for a job carries this variable (children inherit it), so
# a rollback in a fresh process finds them all, re-parented or not, without pid files.
MARKER_VARIABLE = "HOTCOPY_TRANSFER"


def marker(job_id: str) -> str:
    return f"{MARKER_VARIABLE}={job_id}"


STREAM_MARKER_VARIABLE = "HOTCOPY_TRANSFER_STREAM"


def stream_marker(job_id: str, index: int) -> str:
    """One parallel stream's own mark, beside the job's: a watchdog stops that one only."""
    return f"{STREAM_MARKER_VARIABLE}={job_id}/{index}"


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the transfer root
    size: int
    is_dir: bool


def list_tree(executor: Executor, root: str) -> list[FileEntry]:
    """Every entry below root; NUL-separated so that no file name can split a record."""
    out = executor.run(["find", root, "-mindepth", "1", "-printf", r"%y\t%s\t%P\0"],
                       timeout=600).stdout
    entries = []
    for record in out.split("\0"):
        kind, _, rest = record.partition("\t")
        size, _, path = rest.partition("\t")
        if path:
            entries.append(FileEntry(path, int(size) if kind != "d" else 0, kind == "d"))
    return entries


def shippable(entries: Iterable[FileEntry], excludes: Sequence[str]) -> list[FileEntry]:
    """Entries that travel: neither they nor a directory above them is excluded."""
    kept = []
    for entry in entries:
        parts = entry.path.split("/")
        if not any(is_excluded("/".join(parts[:i]), excludes) for i in range(1, len(parts) + 1)):
            kept.append(entry)
    return kept


def split_balanced(entries: Sequence[FileEntry], groups: int) -> list[list[FileEntry]]:
    """Up to ``groups`` lists of about equal bytes (largest file first to the lightest list).

    Directories all go first into the first list, so their modes arrive early; the other
    streams create the parents they need on their own. Empty lists are dropped.
    """
    lists: list[list[FileEntry]] = [[] for _ in range(max(1, groups))]
    heap = [(0, index) for index in range(len(lists))]
    for entry in sorted((e for e in entries if not e.is_dir), key=lambda e: (-e.size, e.path)):
        total, index = heapq.heappop(heap)
        lists[index].append(entry)
        heapq.heappush(heap, (total + entry.size, index))
    for files in lists:
        files.sort(key=lambda e: e.path)
    lists[0][:0] = sorted((e for e in entries if e.is_dir), key=lambda e: e.path)
    return [files for files in lists if files]


def encode_list(entries: Iterable[FileEntry]) -> bytes:
    """A --files-from / tar -T list with --from0 / --null framing."""
    return b"".join(entry.path.encode() + b"\0" for entry in entries)


class ProgressMeter:
    """Sums the byte counts of parallel streams into one figure with one throughput.

    Streams report cumulative counts from threads; callbacks are serialized here, so a
    reporter that is not thread-safe sees one caller at a time.
    """

    def __init__(self, on_progress: ProgressCallback, total: int | None, *,
                 window_s: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.on_progress = on_progress
        self.total = total
        self._window_s = window_s
        self._clock = clock
        self._done: dict[int, int] = {}
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    @property
    def done(self) -> int:
        with self._lock:
            return sum(self._done.values())

    def update(self, stream: int, done: int) -> None:
        with self._lock:
            self._done[stream] = done
            total_done = sum(self._done.values())
            now = self._clock()
            self._samples.append((now, total_done))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self._window_s:
                self._samples.popleft()
            then, before = self._samples[0]
            rate = (total_done - before) / (now - then) if now - then >= 0.5 else None
            self.on_progress(total_done, self.total, rate)

    def reset(self) -> None:
        """A retry that starts over counts from zero again."""
        with self._lock:
            self._done.clear()
            self._samples.clear()


def run_parallel(tasks: Sequence[Callable[[threading.Event], T]],
                 abort: Callable[[], None]) -> list[T]:
    """Run tasks in threads; the first failure (or ^C) sets the event, aborts, re-raises.

    ``abort`` must make the tasks return soon (by killing their processes): the threads
    are joined before the error propagates, so no stream outlives the call.
    """
    cancelled = threading.Event()
    if len(tasks) == 1:
        try:
            return [tasks[0](cancelled)]
        except BaseException:
            cancelled.set()
            abort()
            raise
    pool = ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="transfer")
    futures = [pool.submit(task, cancelled) for task in tasks]
    try:
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in finished:
            future.result()
        results = [future.result() for future in futures]
    except BaseException:
        cancelled.set()
        try:
            abort()
        except Exception:  # the original error matters more; the undo cleans up later
            log.warning("could not stop the other streams", exc_info=True)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def unless_deposed(request: TransferRequest, what: str,
                   action: Callable[[], None]) -> Callable[[], None]:
    """``action`` (stopping this job's processes on a host), done only while this
    controller still owns the job.

    Processes are found by the job's marker, and a new owner's resume starts its own
    streams with the same marker: a deposed controller killing "its" stream would stop
    the new owner's. Its own processes need no help from it either: the new owner's
    resume or rollback stops every process of the job before it acts.
    """
    def guarded() -> None:
        if request.may_act(what):
            action()
        else:
            log.warning("job %s: not %s: this controller no longer owns the job",
                        request.job_id, what)
    return guarded


def kill_marked(executor: Executor, job_id: str) -> None:
    """SIGTERM, then SIGKILL, every process of this job's transfer on a host; idempotent."""
    executor.run(remote.argv("kill_marked.sh", marker(job_id)), timeout=60)


def kill_stream(executor: Executor, job_id: str, index: int) -> None:
    """As kill_marked, for the processes of one parallel stream only."""
    executor.run(remote.argv("kill_marked.sh", stream_marker(job_id, index)), timeout=60)


def empty_directory(executor: Executor, path: str) -> None:
    """Remove what is inside path, keeping path itself (a subvolume, owned, moded)."""
    executor.run(["find", path, "-mindepth", "1", "-maxdepth", "1", "-exec",
                  "rm", "-rf", "--one-file-system", "--", "{}", "+"], timeout=3600)


def used_ports(executor: Executor) -> set[int]:
    out = executor.run(["ss", "-Htln"], check=False).stdout
    ports = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            port = fields[3].rsplit(":", 1)[-1]
            if port.isdigit():
                ports.add(int(port))
    return ports


def candidate_ports(executor: Executor, port_range: tuple[int, int], count: int = 5) -> list[int]:
    """A few free ports of the range in random order: a port nobody can guess in advance."""
    low, high = port_range
    used = used_ports(executor)
    candidates = [port for port in range(low, high + 1) if port not in used]
    random.shuffle(candidates)
    return candidates[:count]


def retry_delay(attempt: int) -> float:
    return float(min(2 ** attempt, 30))
