"""A steady write load on a master, for the demo and the tests.

Real fleets never stop writing while a replica is re-seeded; a clone is only proven
when the master kept committing during it. The load mixes inserts, updates and
deletes in multi-statement transactions, so the replicas apply real row events.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from hotcopy.errors import MySQLError
from hotcopy.mysql.connection import ServerAddress, connect

log = logging.getLogger(__name__)

SCHEMA = "app"
TABLE = "load_orders"


def create_schema(address: ServerAddress, option_file: str) -> None:
    conn = connect(address, option_file)
    try:
        conn.execute(f"CREATE DATABASE IF NOT EXISTS {SCHEMA}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{TABLE} ("
            " id BIGINT AUTO_INCREMENT PRIMARY KEY,"
            " customer INT NOT NULL, amount DECIMAL(12,2) NOT NULL,"
            " note VARCHAR(255) NOT NULL, updated TIMESTAMP(6) NOT NULL"
            " DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),"
            " KEY (customer)) ENGINE=InnoDB")
    finally:
        conn.close()


def seed(address: ServerAddress, option_file: str, rows: int) -> None:
    """Fill the table to about ``rows`` rows, doubling with INSERT ... SELECT."""
    create_schema(address, option_file)
    conn = connect(address, option_file, read_timeout=600)
    try:
        count = int(conn.scalar(f"SELECT COUNT(*) FROM {SCHEMA}.{TABLE}") or 0)
        if count == 0:
            conn.execute(f"INSERT INTO {SCHEMA}.{TABLE} (customer, amount, note) "
                         "VALUES (1, 1.00, REPEAT('x', 200))")
            count = 1
        while count < rows:
            batch = min(count, rows - count)
            conn.execute(
                f"INSERT INTO {SCHEMA}.{TABLE} (customer, amount, note) "
                f"SELECT FLOOR(RAND() * 10000), ROUND(RAND() * 1000, 2), REPEAT(MD5(RAND()), 6) "
                f"FROM {SCHEMA}.{TABLE} LIMIT %s", (batch,))
            count += batch
    finally:
        conn.close()


class WriteLoad:
    """Commits small transactions on the master from a background thread until stopped."""

    def __init__(self, address: ServerAddress, option_file: str, *,
                 pause_s: float = 0.005, seed_value: int = 7) -> None:
        self.address = address
        self.option_file = option_file
        self.pause_s = pause_s
        self.commits = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._random = random.Random(seed_value)  # noqa: S311 - test data, not secrets
        self._thread = threading.Thread(target=self._run, name="write-load", daemon=True)

    def __enter__(self) -> WriteLoad:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        create_schema(self.address, self.option_file)
        self._thread.start()

    def stop(self, timeout: float = 30) -> int:
        self._stop.set()
        self._thread.join(timeout)
        return self.commits

    def _run(self) -> None:
        conn = connect(self.address, self.option_file, read_timeout=30)
        rnd = self._random
        try:
            while not self._stop.is_set():
                try:
                    conn.execute("START TRANSACTION")
                    conn.execute(f"INSERT INTO {SCHEMA}.{TABLE} (customer, amount, note) "
                                 "VALUES (%s, %s, %s)",
                                 (rnd.randint(1, 10000), rnd.randint(1, 99999) / 100,
                                  f"order {self.commits}"))
                    conn.execute(f"UPDATE {SCHEMA}.{TABLE} SET amount = amount + 1 "
                                 "WHERE customer = %s LIMIT 5", (rnd.randint(1, 10000),))
                    if self.commits % 10 == 0:
                        conn.execute(f"DELETE FROM {SCHEMA}.{TABLE} WHERE customer = %s "
                                     "LIMIT 1", (rnd.randint(1, 10000),))
                    conn.execute("COMMIT")
                    self.commits += 1
                except MySQLError as exc:
                    self.errors.append(str(exc))
                    log.warning("write load: %s", exc)
                    time.sleep(0.5)
                    conn.close()
                    conn = connect(self.address, self.option_file, read_timeout=30)
                if self.pause_s:
                    time.sleep(self.pause_s)
        finally:
            conn.close()
