"""The transfer method protocol, and the rules for which files travel.

The data always flows from the source host to the target host directly; the machine
running hotcopy only starts the two ends and reads progress.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from hotcopy.errors import RefusedError
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    loaded = []
    for name, module in METHOD_MODULES.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        loaded.append(name)
    return loaded


def method_for(runtime: Runtime, request: TransferRequest, choice: str,
               snapshot_backend: str) -> TransferMethod:
    """``auto``: the first method, in preference order, that both hosts can use."""
    if choice != "auto":
        method = load_method(choice)
        reason = method.unsupported_reason(runtime, request, snapshot_backend)
        if reason is not None:
            raise RefusedError(f"transfer method {choice} cannot be used: {reason}")
        return method
    reasons = []
    for name in load_all():
        method = load_method(name)
        reason = method.unsupported_reason(runtime, request, snapshot_backend)
        if reason is None:
            return method
        reasons.append(f"{name}: {reason}")
    raise RefusedError("no transfer method fits these hosts (" + "; ".join(reasons) + ")")
