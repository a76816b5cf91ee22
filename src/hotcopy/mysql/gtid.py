"""MariaDB GTID lists (``domain-server_id-seq``): parsing, comparing, errant transactions.

A promotion is only safe when every server's history is a prefix of the new master's:
a replica holding a GTID the master never had (an "errant" transaction, usually a
hand-made write on a replica) would either be lost or break replication once the
master writes the same sequence number in that domain. MariaDB keeps one position per
replication domain (``gtid_binlog_pos``, ``gtid_slave_pos``) and, in
``gtid_binlog_state``, the last sequence number per (domain, server_id); with
``gtid_strict_mode`` sequence numbers only grow within a domain, which is what makes a
per-domain comparison meaningful.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from hotcopy.errors import HotcopyError

log = logging.getLogger(__name__)

_ITEM = re.compile(r"^(\d{1,10})-(\d{1,10})-(\d{1,20})$")
_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1


class GtidError(HotcopyError):
    """A server returned a GTID list hotcopy cannot read: refusing beats guessing."""


@dataclass(frozen=True, order=True)
class Gtid:
    domain: int
    server_id: int
    seq: int

    def __str__(self) -> str:
        return f"{self.domain}-{self.server_id}-{self.seq}"


def parse_list(text: str | None) -> list[Gtid]:
    """Every GTID of a comma-separated list, in the order given; '' is the empty list."""
    items: list[Gtid] = []
    for raw in (text or "").replace("\n", "").split(","):
        item = raw.strip()
        if not item:
            continue
        match = _ITEM.match(item)
        if not match:
            raise GtidError(f"cannot read the GTID '{item}' (expected domain-server_id-seq)")
        domain, server_id, seq = (int(g) for g in match.groups())
        if domain > _MAX_U32 or server_id > _MAX_U32 or seq > _MAX_U64:
            raise GtidError(f"GTID '{item}' is out of range")
        items.append(Gtid(domain, server_id, seq))
    return items


@dataclass(frozen=True)
class Position:
    """One GTID per domain: where a server stands (gtid_binlog_pos / gtid_slave_pos)."""

    by_domain: Mapping[int, Gtid]

    @classmethod
    def parse(cls, text: str | None) -> Position:
        found: dict[int, Gtid] = {}
        for gtid in parse_list(text):
            if gtid.domain in found:
                raise GtidError(f"position '{text}' names domain {gtid.domain} twice")
            found[gtid.domain] = gtid
        return cls(found)

    @classmethod
    def of(cls, gtids: Iterable[Gtid]) -> Position:
        """The furthest GTID per domain among ``gtids`` (highest sequence number)."""
        found: dict[int, Gtid] = {}
        for gtid in gtids:
            if gtid.domain not in found or gtid.seq > found[gtid.domain].seq:
                found[gtid.domain] = gtid
        return cls(found)

    def __str__(self) -> str:
        return ",".join(str(self.by_domain[d]) for d in sorted(self.by_domain))

    @property
    def domains(self) -> set[int]:
        return set(self.by_domain)

    def seq(self, domain: int) -> int:
        gtid = self.by_domain.get(domain)
        return 0 if gtid is None else gtid.seq

    def covers(self, other: Position) -> bool:
        """Has this position reached ``other`` in every domain ``other`` knows?"""
        return all(self.seq(d) >= g.seq for d, g in other.by_domain.items())

    def missing_from(self, other: Position) -> list[Gtid]:
        """Per domain, the GTID of ``other`` this position has not reached (what it lacks)."""
        return [g for d, g in sorted(other.by_domain.items()) if self.seq(d) < g.seq]


class Order(StrEnum):
    EQUAL = "equal"
    AHEAD = "ahead"
    BEHIND = "behind"
    INCOMPARABLE = "incomparable"


def compare(a: Position, b: Position) -> Order:
    """How ``a`` stands to ``b``: ahead means a covers b and has more in some domain.

    Equal sequence numbers with different server ids in one domain are two different
    transactions: the histories diverged there, so they are incomparable.
    """
    a_ahead = b_ahead = False
    for domain in a.domains | b.domains:
        ga, gb = a.by_domain.get(domain), b.by_domain.get(domain)
        sa, sb = a.seq(domain), b.seq(domain)
        if sa > sb:
            a_ahead = True
        elif sb > sa:
            b_ahead = True
        elif ga is not None and gb is not None and ga.server_id != gb.server_id:
            return Order.INCOMPARABLE
    if a_ahead and b_ahead:
        return Order.INCOMPARABLE
    if a_ahead:
        return Order.AHEAD
    return Order.BEHIND if b_ahead else Order.EQUAL


@dataclass(frozen=True)
class History:
    """``gtid_binlog_state``: the last sequence number per (domain, server_id).

    It is what a server's binlogs ever held (it survives binlog purges), so it answers
    "did this master ever have GTID d-s-n" as: some entry (d, s) reached n.
    """

    last: Mapping[tuple[int, int], int]

    @classmethod
    def parse(cls, *texts: str | None) -> History:
        found: dict[tuple[int, int], int] = {}
        for text in texts:
            for gtid in parse_list(text):
                key = (gtid.domain, gtid.server_id)
                found[key] = max(found.get(key, 0), gtid.seq)
        return cls(found)

    def has(self, gtid: Gtid) -> bool:
        return self.last.get((gtid.domain, gtid.server_id), -1) >= gtid.seq

    def gtids(self) -> list[Gtid]:
        return sorted(Gtid(d, s, n) for (d, s), n in self.last.items())


def errant(server_gtids: Iterable[Gtid], master: History) -> list[Gtid]:
    """The GTIDs a server has that the master's history lacks, sorted, without repeats."""
    return sorted({g for g in server_gtids if not master.has(g)})


def describe(gtids: Iterable[Gtid]) -> str:
    return ",".join(str(g) for g in gtids) or "(none)"
