"""The read load on the source replica: point selects at a fixed rate, each one timed.

Runs in its own process (``python -m bench.hotcopy_bench.reader``) so the harness's
threads cannot delay it through the GIL. It logs in with the admin option file (no
secret in argv) over TCP, as an application reading from a replica would, and appends
"end_time service_ms response_ms ok" lines to a file the harness reads per window:
service time from the query's actual send, response time from when the fixed schedule
wanted it sent (a stall then shows in every query that queued behind it).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from types import FrameType

from hotcopy.errors import MySQLError
from hotcopy.mysql.connection import Connection, ServerAddress, connect

_running = True


def _stop(signum: int, frame: FrameType | None) -> None:
    global _running  # noqa: PLW0603 - the signal handler's only way to reach the loop
    _running = False


def _parse_tables(text: str) -> list[tuple[str, int]]:
    tables = []
    for item in text.split(","):
        name, _, rows = item.partition(":")
        tables.append((name, int(rows)))
    return tables


def _connect(address: ServerAddress, option_file: str) -> Connection | None:
    try:
        return connect(address, option_file, connect_timeout=2, read_timeout=30)
    except MySQLError:
        return None


def run(address: ServerAddress, option_file: str, tables: list[tuple[str, int]], rate: float,
        out_path: str) -> None:
    rnd = random.Random(11)  # noqa: S311 - picks rows, not secrets
    interval = 1.0 / rate
    conn = _connect(address, option_file)
    next_at = time.monotonic()
    last_flush = next_at
    with open(out_path, "a", buffering=1 << 16) as out:
        while _running:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            scheduled = next_at
            next_at += interval
            table, rows = tables[rnd.randrange(len(tables))]
            sent = time.monotonic()
            ok = 1
            try:
                if conn is None:
                    raise MySQLError("not connected")
                conn.query(f"SELECT c FROM {table} WHERE id = %s", (rnd.randint(1, rows),))
            except MySQLError:
                ok = 0
                if conn is not None:
                    conn.close()
                conn = _connect(address, option_file)
            done = time.monotonic()
            out.write(f"{time.time():.4f} {(done - sent) * 1000:.3f} "
                      f"{(done - scheduled) * 1000:.3f} {ok}\n")
            if done - last_flush > 0.5:
                out.flush()
                last_flush = done
    if conn is not None:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--option-file", required=True)
    parser.add_argument("--tables", required=True, help="schema.table:rows,...")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    run(ServerAddress("source", args.host, args.port), args.option_file,
        _parse_tables(args.tables), args.rate, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
