"""Plain data the agent's parts exchange: what was observed, and what was decided.

Kept free of servers and stores so the rules in decisions.py and rails.py are pure
functions that unit and property tests can drive with any fleet they like.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


class Health(StrEnum):
    HEALTHY = "healthy"
    LAGGING = "lagging"
    BROKEN = "broken"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class ReplicaHealth:
    """One replica as the last poll saw it, with the reasons for its class."""

    name: str
    state: Health
    reasons: tuple[str, ...] = ()
    sql_reachable: bool = True
    ssh_reachable: bool = True
    io_running: str = ""
    sql_running: str = ""
    sql_errno: int = 0
    sql_error: str = ""
    io_error: str = ""
    lag_s: int | None = None
    version: str = ""
    crash_safe: bool | None = None
    free_bytes: int | None = None
    datadir_bytes: int | None = None
    error_since: float | None = None
    marked: bool = False

    @property
    def major(self) -> str:
        """"10.11" of "10.11.19-MariaDB-0+deb12u1": what a datadir is compatible with."""
        return ".".join(self.version.split("-")[0].split(".")[:2])

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        data["reasons"] = list(self.reasons)
        return data


@dataclass(frozen=True)
class Observation:
    """One poll of the whole shard."""

    at: float
    master: str | None
    master_up: bool
    master_reasons: tuple[str, ...]
    replicas: dict[str, ReplicaHealth]

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "master": self.master, "master_up": self.master_up,
                "master_reasons": list(self.master_reasons),
                "replicas": {name: r.as_dict() for name, r in self.replicas.items()}}


@dataclass(frozen=True)
class RunningJob:
    """An unfinished job of the journal, as far as the rails care."""

    id: str
    kind: str
    state: str
    source: str | None
    target: str | None
    owner_alive: bool


@dataclass(frozen=True)
class ReseedRecord:
    """A re-seed the agent started (whatever became of it): the flap and daily rails."""

    target: str
    donor: str
    job: str | None
    started: float
    outcome: str = "started"  # started | committed | rolled-back | failed | attention


@dataclass(frozen=True)
class FailoverRecord:
    """An automatic failover the agent started: the anti-flap and daily rails of failover.

    ``candidate`` is who the agent expected the workflow to promote; ``promoted`` who it
    did (the workflow chooses again after every replica has applied its relay log).
    """

    master: str
    candidate: str | None
    job: str | None
    started: float
    outcome: str = "started"  # started | committed | rolled-back | failed | attention
    promoted: str | None = None


@dataclass(frozen=True)
class Block:
    """A rail that stops a re-seed: why, and until when (None: until someone acts)."""

    rail: str
    reason: str
    until: float | None = None


@dataclass(frozen=True)
class Policy:
    """The rails' settings ([agent] in the config)."""

    grace_s: float = 60.0
    flap_window_s: float = 3600.0
    max_reseeds_per_day: int = 4
    lag_threshold_s: int = 60
    free_space_margin: float = 0.10
    auto_failover: bool = False
    failover_after_s: float = 30.0
    max_failovers_per_day: int = 2


@dataclass
class Decision:
    """What the leader concluded about one replica (or the shard) in one poll.

    ``action``: reseed | blocked | no-donor | master-down | failover | resume | rollback.
    ``candidate``: for failover, the replica the workflow would promote now; ``since``:
    for a master that is down, when this leader first saw it down (not part of the key:
    it does not make a new decision).
    """

    action: str
    target: str | None
    reasons: list[str]
    at: float
    donor: str | None = None
    until: float | None = None
    rail: str | None = None
    observe_only: bool = False
    job: str | None = None
    rejected_donors: dict[str, str] = field(default_factory=dict)
    candidate: str | None = None
    since: float | None = None

    def key(self) -> tuple[str | None, ...]:
        """Same key as the previous poll's decision: not recorded again (no log flood)."""
        return (self.action, self.target, self.donor, self.rail, self.job, self.candidate)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
