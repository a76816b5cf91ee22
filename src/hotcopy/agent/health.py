"""Per-replica health read off the real servers, and its classification.

The class decides whether the agent may ever act: only ``broken`` replicas are
re-seeded. Lag is reported, never acted on; an unreachable server may be restarting;
a master that is down is failover's business and makes every replica look unhealthy
(IO threads reconnecting), which is exactly why it is never a reason to re-seed.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from hotcopy.agent.model import Health, Observation, Policy, ReplicaHealth
from hotcopy.errors import HotcopyError
from hotcopy.mysql import replication
from hotcopy.mysql.flavor import ReplicaStatus
from hotcopy.runtime import Runtime

log = logging.getLogger(__name__)

#: SQL thread errors no restart repairs: the relay log cannot be read back.
LOST_SQL_ERRNOS = frozenset({1594})
#: IO thread errors no restart repairs: the master no longer has the binlogs we need.
_LOST_IO = re.compile(r"\berror 1236\b", re.IGNORECASE)


def _sql_error(status: ReplicaStatus, now: float, error_since: float | None,
               policy: Policy) -> tuple[Health, list[str]]:
    error = f"SQL thread stopped on error {status.last_sql_errno}: {status.last_sql_error}"
    if status.last_sql_errno in LOST_SQL_ERRNOS:
        return Health.BROKEN, [error, "the relay log cannot be read: lost beyond repair "
                                      "by a restart"]
    since = now if error_since is None else error_since
    if now - since >= policy.grace_s:
        return Health.BROKEN, [error, f"stopped for {now - since:.0f}s, longer than the "
                                      f"grace period of {policy.grace_s:.0f}s"]
    return Health.LAGGING, [error, f"inside the grace period: broken at "
                                   f"{_stamp(since + policy.grace_s)} if not repaired"]


def classify(status: ReplicaStatus | None, *, now: float, error_since: float | None,
             policy: Policy, mark: str | None) -> tuple[Health, list[str]]:
    """The class of a reachable server that is not the master, with reasons."""
    if mark is not None:
        return Health.BROKEN, [f"marked for re-seed by an operator: {mark}"]
    if status is None:
        return Health.LAGGING, ["no replication configured: not re-seeded unless an operator "
                                "marks it (`hotcopy agent reseed`)"]
    if status.sql_running != "Yes" and status.last_sql_errno:
        return _sql_error(status, now, error_since, policy)
    if status.io_running != "Yes" and _LOST_IO.search(status.last_io_error or ""):
        return Health.BROKEN, [f"IO thread stopped: {status.last_io_error}",
                               "the master no longer has the binlogs this replica needs"]
    reasons: list[str] = []
    if status.sql_running != "Yes":
        reasons.append("SQL thread stopped without an error (stopped by hand?)")
    if status.io_running != "Yes":
        reasons.append(f"IO thread {status.io_running or 'stopped'}"
                       + (f": {status.last_io_error}" if status.last_io_error else ""))
    lag = status.seconds_behind
    if lag is None and not reasons:
        reasons.append("lag unknown")
    elif lag is not None and lag > policy.lag_threshold_s:
        reasons.append(f"{lag}s behind the master (threshold {policy.lag_threshold_s}s)")
    return (Health.LAGGING, reasons) if reasons else (Health.HEALTHY, [])


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


class HealthMonitor:
    """Polls every server of the shard; remembers when each SQL error was first seen.

    The memory is the leader's own: a new leader starts the grace period again, which
    only ever delays a re-seed.
    """

    def __init__(self, runtime: Runtime, policy: Policy, *, audit_interval_s: float = 300,
                 probe_timeout_s: float = 10,
                 audit: Callable[[str], bool | None] | None = None) -> None:
        self.runtime = runtime
        self.policy = policy
        self.audit_interval_s = audit_interval_s
        self.probe_timeout_s = probe_timeout_s
        self._audit = audit or self._crash_safe
        self._error_since: dict[str, tuple[int, float]] = {}
        self._audits: dict[str, tuple[float, bool | None]] = {}
        self._sizes: dict[str, tuple[float, int]] = {}

    def observe(self, marks: Mapping[str, str], now: float | None = None) -> Observation:
        now = time.time() if now is None else now
        statuses: dict[str, ReplicaStatus | None] = {}
        unreachable: dict[str, str] = {}
        for name in self.runtime.config.servers:
            try:
                statuses[name] = replication.single_channel(self.runtime.server(name))
            except HotcopyError as exc:
                self.runtime.server(name).close()
                unreachable[name] = exc.message
        master = self._find_master(statuses, unreachable)
        replicas: dict[str, ReplicaHealth] = {}
        for name in self.runtime.config.servers:
            if name == master:
                continue
            replicas[name] = self._replica(name, statuses.get(name), unreachable.get(name),
                                           marks.get(name), now)
        master_up, master_reasons = self._master_state(master, unreachable, replicas)
        return Observation(now, master, master_up, tuple(master_reasons), replicas)

    def _find_master(self, statuses: Mapping[str, ReplicaStatus | None],
                     unreachable: Mapping[str, str]) -> str | None:
        """The configured server the replicas point at; else the one that replicates from
        nobody."""
        by_address = {(c.host, c.port): n for n, c in self.runtime.config.servers.items()}
        pointed = {by_address.get((s.master_host, s.master_port))
                   for s in statuses.values() if s is not None}
        pointed.discard(None)
        if len(pointed) == 1:
            return pointed.pop()
        standalone = [n for n, s in statuses.items() if s is None and n not in unreachable]
        return standalone[0] if len(standalone) == 1 else None

    def _master_state(self, master: str | None, unreachable: Mapping[str, str],
                      replicas: Mapping[str, ReplicaHealth]) -> tuple[bool, list[str]]:
        reasons: list[str] = []
        if master is None:
            reasons.append("no configured server is the master of the replicas")
        elif master in unreachable:
            reasons.append(f"master {master} unreachable: {unreachable[master]}")
        reachable = [r for r in replicas.values() if r.sql_reachable]
        if reachable and all(r.io_running != "Yes" for r in reachable):
            reasons.append("the IO thread of every reachable replica is not running")
        master_up = master is not None and master not in unreachable
        return master_up, reasons

    def _replica(self, name: str, status: ReplicaStatus | None, unreachable: str | None,
                 mark: str | None, now: float) -> ReplicaHealth:
        ssh_ok, ssh_error = self._ssh_reachable(name)
        if unreachable is not None or not ssh_ok:
            reasons = []
            if unreachable is not None:
                reasons.append(f"SQL unreachable: {unreachable}")
            if not ssh_ok:
                reasons.append(f"ssh unreachable: {ssh_error}")
            self._error_since.pop(name, None)
            base = ReplicaHealth(name, Health.UNREACHABLE, tuple(reasons),
                                 sql_reachable=unreachable is None, ssh_reachable=ssh_ok,
                                 marked=mark is not None)
            if mark is not None:
                # An operator may ask to re-seed a server that cannot start any more.
                return replace(base, state=Health.BROKEN if ssh_ok else Health.UNREACHABLE,
                               reasons=(f"marked for re-seed by an operator: {mark}",
                                        *reasons))
            return base
        since = self._track_error(name, status, now)
        state, reasons = classify(status, now=now, error_since=since, policy=self.policy,
                                  mark=mark)
        server = self.runtime.server(name)
        crash_safe = self._cached_audit(name, now) if state is Health.HEALTHY else None
        free, used = self._space(name, now)
        return ReplicaHealth(
            name, state, tuple(reasons), io_running=status.io_running if status else "",
            sql_running=status.sql_running if status else "",
            sql_errno=status.last_sql_errno if status else 0,
            sql_error=status.last_sql_error if status else "",
            io_error=status.last_io_error if status else "",
            lag_s=status.seconds_behind if status else None, version=server.version_string,
            crash_safe=crash_safe, free_bytes=free, datadir_bytes=used, error_since=since,
            marked=mark is not None)

    def _track_error(self, name: str, status: ReplicaStatus | None, now: float) -> float | None:
        if status is None or status.sql_running == "Yes" or not status.last_sql_errno:
            self._error_since.pop(name, None)
            return None
        known = self._error_since.get(name)
        if known is None or known[0] != status.last_sql_errno:
            self._error_since[name] = (status.last_sql_errno, now)
            return now
        return known[1]

    def _ssh_reachable(self, name: str) -> tuple[bool, str]:
        try:
            self.runtime.executor(name).run(["true"], timeout=self.probe_timeout_s)
        except HotcopyError as exc:
            return False, exc.message
        return True, ""

    def _space(self, name: str, now: float) -> tuple[int | None, int | None]:
        """Free bytes where the new datadir goes (each poll: df is cheap), and the
        datadir's size as a donor (du reads every inode: refreshed with the audit)."""
        executor = self.runtime.executor(name)
        datadir = self.runtime.config.server(name).datadir
        try:
            free = int(executor.run(["df", "--output=avail", "-B1", os.path.dirname(datadir)],
                                    timeout=self.probe_timeout_s).stdout.split()[-1])
            cached = self._sizes.get(name)
            if cached is not None and now - cached[0] < self.audit_interval_s:
                return free, cached[1]
            used = int(executor.run(["du", "-sxb", datadir],
                                    timeout=self.probe_timeout_s * 6).stdout.split()[0])
        except (HotcopyError, ValueError, IndexError) as exc:
            log.warning("free space of %s unknown: %s", name, exc)
            return None, None
        self._sizes[name] = (now, used)
        return free, used

    def _cached_audit(self, name: str, now: float) -> bool | None:
        cached = self._audits.get(name)
        if cached is not None and now - cached[0] < self.audit_interval_s:
            return cached[1]
        verdict = self._audit(name)
        self._audits[name] = (now, verdict)
        return verdict

    def _crash_safe(self, name: str) -> bool | None:
        from hotcopy.workflows.audit import audit_one

        try:
            return audit_one(self.runtime, name, fix=False).crash_safe
        except HotcopyError as exc:
            log.warning("crash-safety audit of %s failed: %s", name, exc.message)
            return None

    def forget(self, name: str) -> None:
        """After a re-seed: the replica's old error and audit describe another datadir."""
        self._error_since.pop(name, None)
        self._audits.pop(name, None)
        self._sizes.pop(name, None)
