"""The transfer method protocol, and the rules for which files travel.

The data always flows from the source host to the target host directly; the machine
running hotcopy only starts the two ends and reads progress.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

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
    name: str

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


def method_for(name: str) -> TransferMethod:
    from hotcopy.transfer.rsyncd import RsyncDaemon

    methods: dict[str, TransferMethod] = {"rsyncd": RsyncDaemon()}
    return methods["rsyncd" if name == "auto" else name]
