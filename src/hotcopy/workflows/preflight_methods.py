"""Preflight of the transfer: the method, its tools on both hosts, its listener port.

Everything a transfer needs can be known before the source is touched. Found only at
the ``serve`` step, a method that cannot work costs the source a stopped SQL thread, a
backup lock and a snapshot, then a rollback: so the method a clone will use is chosen
here, read-only, and a forced method that cannot work is refused with exit 2.
"""

from __future__ import annotations

import logging
import os

from hotcopy.errors import HotcopyError
from hotcopy.remote import missing_tools
from hotcopy.runtime import Runtime
from hotcopy.snapshot import zfs
from hotcopy.snapshot.base import load_backend
from hotcopy.transfer.base import (
    TransferRequest,
    candidate_ports,
    load_all,
    load_method,
    pacing_unsupported,
)
from hotcopy.workflows.preflight import Finding, Preflight

log = logging.getLogger(__name__)

# Which end listens on a port of transfer.port_range; rsync_ssh uses the source's sshd.
_LISTENER_ROLE = {"rsyncd": "source", "stream": "target", "zfs_send": "target"}

# zfs send needs these besides what zfs_send's own check reads off a live snapshot.
_ZFS_SEND_TOOLS = {"source": ["zfs", "socat", "dd"], "target": ["zfs", "socat", "setsid"]}


def check(report: Preflight, runtime: Runtime, source: str, target: str,
          choice: str | None) -> None:
    """Pick the transfer method a clone would use; an error finding when none can work."""
    if report.errors or report.facts.get("pipeline") != "snapshot":
        return  # the backup pipeline streams itself; with errors, the clone is refused anyway
    config = runtime.config
    wanted = choice or config.transfer.method
    backend = str(report.facts.get("snapshot_backend") or "")
    _check_forced_snapshot(report, runtime, source)
    if report.errors:
        return
    _check_probe_table(report, runtime, source)
    request = _request(runtime, source, target, report)
    names = load_all() if wanted == "auto" else [wanted]
    reasons: list[str] = []
    for name in names:
        reason = _unsupported(runtime, request, name, backend)
        if reason is None:
            reason = _no_free_port(runtime, request, name)
        if reason is None:
            report.facts["transfer_method"] = name
            passed = f"; {'; '.join(reasons)}" if reasons else ""
            report.info("transfer.method", f"transfer: {name}"
                        + (f" (auto: the first that fits{passed})" if wanted == "auto" else ""))
            from hotcopy.workflows import preflight_delta  # late: it imports preflight

            preflight_delta.check(report, runtime, source, target)
            return
        reasons.append(f"{name}: {reason}")
    if wanted == "auto":
        report.error("transfer.method", "no transfer method fits these hosts ("
                     + "; ".join(reasons) + ")",
                     hint="install rsync on both hosts (the rsyncd method needs nothing else)")
        return
    origin = "--transfer" if choice else f"transfer.method in {config.source_path}"
    report.error("transfer.method", f"transfer method {wanted} ({origin}) cannot be used: "
                 + reasons[0].partition(": ")[2],
                 hint="choose another with --transfer (auto picks the first that fits), "
                      "or fix what is named above")


def _check_probe_table(report: Preflight, runtime: Runtime, source: str) -> None:
    """The throttle's probe table must be readable by key before the source is touched."""
    transfer = runtime.config.transfer
    if transfer.max_source_latency_factor is None or transfer.latency_probe_table is None:
        return
    from hotcopy.workflows.pacing import ProbeTable  # late: it imports the step runner

    try:
        ProbeTable.resolve(runtime.server(source), transfer.latency_probe_table)
    except HotcopyError as exc:
        report.error("transfer.latency_probe_table", exc.message, exc.hint)


def _request(runtime: Runtime, source: str, target: str, report: Preflight) -> TransferRequest:
    """The request the serve step will build, with the live datadir for the snapshot."""
    config = runtime.config
    target_datadir = config.server(target).datadir
    return TransferRequest(
        job_id="plan", source=source, target=target,
        source_address=config.server(source).host, target_address=config.server(target).host,
        source_path=config.server(source).datadir,
        destination=f"{target_datadir}.hotcopy-new-plan",
        excludes=list(report.facts.get("excludes", [])),
        expected_bytes=report.facts.get("ship_bytes"),
        bwlimit_kbps=config.transfer.bwlimit_kbps, timeout_s=config.transfer.timeout_s,
        retries=config.transfer.retries)


def _unsupported(runtime: Runtime, request: TransferRequest, name: str,
                 backend: str) -> str | None:
    paced = pacing_unsupported(runtime, load_method(name))
    if paced:
        return paced
    if name == "zfs_send":
        return _zfs_send_unsupported(runtime, request, backend)
    return load_method(name).unsupported_reason(runtime, request, backend)


def _zfs_send_unsupported(runtime: Runtime, request: TransferRequest,
                          backend: str) -> str | None:
    """zfs_send's own check reads the exposed snapshot; before one exists, the datasets."""
    if backend != "zfs":
        return (f"the source datadir is snapshotted with {backend or 'no snapshot'}, and zfs "
                "send ships ZFS snapshots only")
    for role, server in (("source", request.source), ("target", request.target)):
        tools = list(_ZFS_SEND_TOOLS[role])
        if role == "source" and request.bwlimit_kbps:
            tools.append("pv")
        missing = missing_tools(runtime.executor(server), tools)
        if missing:
            return f"{', '.join(missing)} not installed on {server}"
    for server in (request.source, request.target):
        datadir = runtime.config.server(server).datadir
        if zfs.dataset_with_mountpoint(runtime.executor(server), datadir) is None:
            return (f"the datadir {datadir} of {server} is not a ZFS dataset's mountpoint; "
                    "zfs send ships whole datasets")
    return None


def _no_free_port(runtime: Runtime, request: TransferRequest, name: str) -> str | None:
    role = _LISTENER_ROLE.get(name)
    if role is None:
        return None
    server = request.source if role == "source" else request.target
    low, high = runtime.config.transfer.port_range
    if candidate_ports(runtime.executor(server), (low, high), count=1):
        return None
    return (f"every port of transfer.port_range [{low}, {high}] is in use on {server}, "
            "where the listener would run")


def _check_forced_snapshot(report: Preflight, runtime: Runtime, source: str) -> None:
    """A configured backend is not probed when chosen: confirm it fits the datadir."""
    conf = runtime.config.server(source)
    if conf.snapshot == "auto" or any(f.check == "source.snapshot" for f in report.errors):
        return
    reason = load_backend(conf.snapshot, conf).unsupported_reason(
        runtime.executor(source), conf.datadir)
    if reason:
        report.findings.append(Finding(
            "error", "source.snapshot",
            f"servers.{source}.snapshot = {conf.snapshot}, but {os.path.normpath(conf.datadir)} "
            f"cannot be snapshotted with it: {reason}",
            f"set servers.{source}.snapshot = \"auto\" to detect the backend"))
