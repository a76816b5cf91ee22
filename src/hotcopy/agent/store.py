"""Where the agents keep what must outlive any one of them: pause, marks, history, leader.

``AgentStore`` is the interface; ``SqliteAgentStore`` serves agents on one host (next
to the SQLite journal). The etcd store (journal issue) implements the same protocol,
so a pause set from any host stops every agent and survives their restarts.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from hotcopy.agent.model import FailoverRecord, ReseedRecord
from hotcopy.agent.rails import Pause
from hotcopy.errors import RefusedError

log = logging.getLogger(__name__)


class AgentStore(Protocol):
    def pause(self) -> Pause | None: ...
    def set_pause(self, pause: Pause | None) -> None: ...
    def marks(self) -> dict[str, str]: ...
    def mark(self, name: str, text: str) -> None: ...
    def unmark(self, name: str) -> None: ...
    def record_decision(self, decision: dict[str, Any]) -> None: ...
    def decisions(self, limit: int = 20) -> list[dict[str, Any]]: ...
    def record_reseed(self, record: ReseedRecord) -> int: ...
    def update_reseed(self, rowid: int, *, job: str | None, outcome: str) -> None: ...
    def reseeds(self, since: float) -> list[ReseedRecord]: ...
    def record_failover(self, record: FailoverRecord) -> int: ...
    def update_failover(self, rowid: int, *, job: str | None, outcome: str,
                        promoted: str | None) -> None: ...
    def failovers(self, since: float) -> list[FailoverRecord]: ...
    def heartbeat(self, agent_id: str, info: dict[str, Any], now: float) -> None: ...
    def agents(self) -> list[dict[str, Any]]: ...
    def put_status(self, status: dict[str, Any]) -> None: ...
    def status(self) -> dict[str, Any] | None: ...

    def campaign(self, agent_id: str, ttl_s: float, now: float) -> bool:
        """Become or stay leader: take the leader key if absent, expired or ours."""
        ...

    def leader(self, now: float) -> tuple[str, float] | None: ...
    def resign(self, agent_id: str) -> None: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (id INTEGER PRIMARY KEY, at REAL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reseeds (id INTEGER PRIMARY KEY, target TEXT, donor TEXT, job TEXT,
                                    started REAL, outcome TEXT);
CREATE TABLE IF NOT EXISTS failovers (id INTEGER PRIMARY KEY, master TEXT, candidate TEXT,
                                      job TEXT, started REAL, outcome TEXT, promoted TEXT);
CREATE TABLE IF NOT EXISTS agents (id TEXT PRIMARY KEY, seen REAL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leader (one INTEGER PRIMARY KEY CHECK (one = 1), id TEXT,
                                   expires REAL);
"""


class SqliteAgentStore:
    """One SQLite file; each write is its own durable transaction."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 10000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise RefusedError(f"cannot open the agent store {self.path}: {exc}",
                               hint="set [agent] store_path to a writable place") from exc

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def _get(self, key: str) -> Any:
        rows = self._rows("SELECT value FROM kv WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def _put(self, key: str, value: Any) -> None:
        if value is None:
            self._write("DELETE FROM kv WHERE key = ?", (key,))
        else:
            self._write("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                        "SET value = excluded.value", (key, json.dumps(value, default=str)))

    def pause(self) -> Pause | None:
        value = self._get("pause")
        return None if value is None else Pause(value["since"], value["by"], value["reason"])

    def set_pause(self, pause: Pause | None) -> None:
        self._put("pause", None if pause is None else
                  {"since": pause.since, "by": pause.by, "reason": pause.reason})

    def marks(self) -> dict[str, str]:
        return {str(n): str(t) for n, t in self._rows("SELECT name, text FROM marks")}

    def mark(self, name: str, text: str) -> None:
        self._write("INSERT OR REPLACE INTO marks (name, text) VALUES (?, ?)", (name, text))

    def unmark(self, name: str) -> None:
        self._write("DELETE FROM marks WHERE name = ?", (name,))

    def record_decision(self, decision: dict[str, Any]) -> None:
        self._write("INSERT INTO decisions (at, body) VALUES (?, ?)",
                    (decision.get("at", time.time()), json.dumps(decision, default=str)))

    def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._rows("SELECT body FROM decisions ORDER BY id DESC LIMIT ?", (limit,))
        return [json.loads(body) for (body,) in rows]

    def record_reseed(self, record: ReseedRecord) -> int:
        cursor = self._write("INSERT INTO reseeds (target, donor, job, started, outcome) "
                             "VALUES (?, ?, ?, ?, ?)", (record.target, record.donor,
                                                        record.job, record.started,
                                                        record.outcome))
        return int(cursor.lastrowid or 0)

    def update_reseed(self, rowid: int, *, job: str | None, outcome: str) -> None:
        self._write("UPDATE reseeds SET job = COALESCE(?, job), outcome = ? WHERE id = ?",
                    (job, outcome, rowid))

    def reseeds(self, since: float) -> list[ReseedRecord]:
        rows = self._rows("SELECT target, donor, job, started, outcome FROM reseeds "
                          "WHERE started >= ? ORDER BY started", (since,))
        return [ReseedRecord(str(t), str(d), j, float(s), str(o)) for t, d, j, s, o in rows]

    def record_failover(self, record: FailoverRecord) -> int:
        cursor = self._write("INSERT INTO failovers (master, candidate, job, started, outcome, "
                             "promoted) VALUES (?, ?, ?, ?, ?, ?)",
                             (record.master, record.candidate, record.job, record.started,
                              record.outcome, record.promoted))
        return int(cursor.lastrowid or 0)

    def update_failover(self, rowid: int, *, job: str | None, outcome: str,
                        promoted: str | None) -> None:
        self._write("UPDATE failovers SET job = COALESCE(?, job), outcome = ?, "
                    "promoted = COALESCE(?, promoted) WHERE id = ?",
                    (job, outcome, promoted, rowid))

    def failovers(self, since: float) -> list[FailoverRecord]:
        rows = self._rows("SELECT master, candidate, job, started, outcome, promoted "
                          "FROM failovers WHERE started >= ? ORDER BY started", (since,))
        return [FailoverRecord(str(m), c, j, float(s), str(o), p)
                for m, c, j, s, o, p in rows]

    def heartbeat(self, agent_id: str, info: dict[str, Any], now: float) -> None:
        self._write("INSERT OR REPLACE INTO agents (id, seen, info) VALUES (?, ?, ?)",
                    (agent_id, now, json.dumps(info, default=str)))

    def agents(self) -> list[dict[str, Any]]:
        return [{"id": i, "seen": s, **json.loads(info)}
                for i, s, info in self._rows("SELECT id, seen, info FROM agents ORDER BY id")]

    def put_status(self, status: dict[str, Any]) -> None:
        self._put("status", status)

    def status(self) -> dict[str, Any] | None:
        value = self._get("status")
        return value if isinstance(value, dict) else None

    def campaign(self, agent_id: str, ttl_s: float, now: float) -> bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id, expires FROM leader WHERE one = 1").fetchone()
                if row is None or row[0] == agent_id or row[1] < now:
                    self._db.execute("INSERT OR REPLACE INTO leader (one, id, expires) "
                                     "VALUES (1, ?, ?)", (agent_id, now + ttl_s))
                    won = True
                else:
                    won = False
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return won

    def leader(self, now: float) -> tuple[str, float] | None:
        rows = self._rows("SELECT id, expires FROM leader WHERE one = 1 AND expires >= ?",
                          (now,))
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    def resign(self, agent_id: str) -> None:
        self._write("DELETE FROM leader WHERE one = 1 AND id = ?", (agent_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
