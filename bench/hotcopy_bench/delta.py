"""Delta re-seeds of a stale replica (``clone.delta``), against the full clone.

Each run leaves the target a physical copy of the source first (the round's full
hotcopy clone ran just before; without one, a clone is made, untimed), stops the
target's replication, and has the master rewrite a contiguous ``fraction`` of every
sysbench table's rows (so about that share of the data pages changes, as on a replica
that stopped for a while). Once the source has those writes, the delta clone is timed
as an operator runs it; its figures say what rsync had to send.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bench.hotcopy_bench import pipelines
from bench.hotcopy_bench.aggregate import DELTA_PIPELINES
from bench.hotcopy_bench.shard import SOURCE, TARGET, Shard
from hotcopy.mysql import replication

log = logging.getLogger(__name__)

#: Stale fractions the harness measures (the issue's 1 % and 10 %).
FRACTIONS = dict(zip(DELTA_PIPELINES, (0.01, 0.10), strict=True))
CHUNK_ROWS = 10_000


def make_stale(shard: Shard, fraction: float) -> int:
    """Stop the target's replication and rewrite FRACTION of the rows on the master; the
    number of rows rewritten."""
    shard.server(TARGET).execute(("STOP SLAVE", ()))
    master = shard.server("master")
    changed = 0
    for table in shard.dataset.tables:
        last = max(1, int(table.rows * fraction))
        for low in range(1, last + 1, CHUNK_ROWS):
            high = min(last, low + CHUNK_ROWS - 1)
            # MD5 of the id and a constant: new bytes in every row, the same on each run
            # of one fraction, different from what sysbench wrote.
            master.execute((f"UPDATE {table.qualified} SET c = RPAD(MD5(CONCAT(id, %s)), "
                            "120, 'y') WHERE id BETWEEN %s AND %s", (fraction, low, high)))
            changed += high - low + 1
    replication.wait_caught_up(shard.server(SOURCE), master, timeout_s=1800)
    return changed


def stale_then_delta(shard: Shard, full_config: Path, delta_config: Path, fraction: float,
                     logs: Path, tag: str, *, after_full_clone: bool) -> dict[str, Any]:
    if not after_full_clone:
        pipelines.hotcopy_clone(full_config, None, logs, f"{tag}-base")
        shard.wait_replicas()
    rows = make_stale(shard, fraction)
    figures = pipelines.hotcopy_clone(delta_config, None, logs, tag)
    return {**figures, "stale_fraction": fraction, "rows_changed": rows}
