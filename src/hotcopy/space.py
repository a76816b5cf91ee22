"""How much free space a clone needs on the target, and how much it never takes.

One rule for the preflight (refuse a clone that will not fit), the transfer's space guard
(stop a copy that something else squeezed) and the agent (pick a donor that fits), so the
three never disagree: a clone the preflight lets through cannot trip the guard on its own.
"""

from __future__ import annotations

# Room the target's running mysqld keeps while the copy arrives. On a copy-on-write
# filesystem (btrfs, ZFS) every InnoDB write, the redo log's included, allocates anew and
# freed extents come back only at the next commit: measured on the sandbox (btrfs, MariaDB
# 10.11) with 7 MiB left, a replica applying inserts aborted within a second with
# `[FATAL] InnoDB: pwrite("ib_logfile0") returned -1, operating system error 28`.
TARGET_WRITE_ROOM = 64 * 2**20

# The guard never holds back more than this, however large the copy.
MAX_RESERVE = 2**30


def extra_needed(data_bytes: int, margin: float) -> int:
    """Free space beyond the data itself: the configured margin, and at least twice the
    write room, so the guard's reserve (half of it) is always left after the copy."""
    return max(int(data_bytes * margin), 2 * TARGET_WRITE_ROOM)


def space_needed(data_bytes: int, margin: float) -> int:
    return data_bytes + extra_needed(data_bytes, margin)


def guard_reserve(data_bytes: int, margin: float) -> int:
    """What the transfer leaves free: half the extra the preflight asked for, at most
    MAX_RESERVE (a huge copy need not keep a huge hole), never under the write room."""
    return max(TARGET_WRITE_ROOM, min(MAX_RESERVE, extra_needed(data_bytes, margin) // 2))
