"""Why did a replica stop on a duplicate key or a missing row, and what now?

After a crash of a replica whose position is not transactional, the position and the
data disagree. Two directions, two symptoms, two different remedies:

- position behind data: the next transaction is already in the data; re-applying it
  stops on a duplicate key (or an update finds the row already changed);
- data behind position (or diverged): a transaction was skipped or rows were changed
  locally; a later event misses its row, or a different row holds its key.

The only way to tell is to look: decode the failing event from the replica's relay log
and compare each of its rows with the stored row of the same key. Nothing here writes;
in particular it never skips an event: it says what skipping would mean and prints the
exact statements, for a human to run after reading the evidence.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable
from typing import Any

from hotcopy import remote
from hotcopy.errors import HotcopyError
from hotcopy.mysql.audit.facts import Facts
from hotcopy.mysql.audit.model import show_sql
from hotcopy.mysql.audit.row_events import Image, RowEvent, find_row_event
from hotcopy.mysql.flavor import ReplicaStatus
from hotcopy.mysql.flavor import catalog as sql
from hotcopy.mysql.server import Server

log = logging.getLogger(__name__)

ER_DUP_ENTRY = 1062
ER_KEY_NOT_FOUND = 1032
ER_GTID_STRICT_OUT_OF_ORDER = 1950  # MariaDB, gtid_strict_mode
DIAGNOSED_ERRORS = (ER_DUP_ENTRY, ER_KEY_NOT_FOUND, ER_GTID_STRICT_OUT_OF_ORDER)
MAX_ROWS = 200
MAX_RELAY_FILES = 4
DECODE_LIMIT_BYTES = 64 * 1024 * 1024

_END_POS = re.compile(r"end_log_pos (\d+)")
_TABLE = re.compile(r"on table ([^;.\s]+)\.([^;\s]+);")
_STRICT = re.compile(r"binlog GTID (\d+-\d+-\d+) .* existing GTID (\d+-\d+-\d+)")

RunOnHost = Callable[[list[str]], str]

ADVICE = {
    "position_behind_data": (
        "The replica already holds the changes of the transaction it is trying to apply: "
        "its position is behind its data (the position was not committed with the data, "
        "so a crash lost the position update but kept the data)."),
    "data_missing": (
        "Rows this transaction changes are missing on the replica: an earlier transaction "
        "was lost or skipped (a position ahead of its data, e.g. a non-transactional "
        "position table after a crash) or the rows were removed locally. Skipping this "
        "event would hide the loss and widen the divergence."),
    "conflicting_row": (
        "A different row holds this key on the replica: its data diverged from the master "
        "(local writes, an earlier skip, or a position several transactions behind whose "
        "later changes altered the row). Skipping would keep the wrong row."),
    "already_deleted_or_lost": (
        "The rows this transaction deletes are already gone: either it was applied before "
        "(position behind data) or the rows never arrived (data behind position). The row "
        "alone cannot tell which."),
    "undetermined": "The failing event could not be compared with the stored rows.",
}


def diagnose(server: Server, facts: Facts, channel: ReplicaStatus,
             run_on_host: RunOnHost | None) -> dict[str, Any]:
    """Evidence and advice for one channel stopped on 1062/1032; reads only."""
    result: dict[str, Any] = {
        "channel": channel.channel, "errno": channel.last_sql_errno,
        "error": channel.last_sql_error, "skipped": False}
    if channel.last_sql_errno == ER_GTID_STRICT_OUT_OF_ORDER:
        verdict, gtid, evidence = _strict_mode_stop(facts, channel)
        result.update(gtid=gtid, evidence=evidence, verdict=verdict,
                      explanation=ADVICE[verdict])
        result["what_to_do"] = _what_to_do(server, facts, channel, verdict, gtid)
        return result
    try:
        event = _failing_event(facts, channel, run_on_host)
        rows = [_row_state(server, event, change.before, change.after)
                for change in event.rows[:MAX_ROWS]]
        verdict = _verdict(event.kind, [r["state"] for r in rows])
        result.update(gtid=event.gtid, table=f"{event.schema}.{event.table}",
                      event=event.kind, rows_in_event=len(event.rows), rows=rows[:20])
    except HotcopyError as exc:
        verdict = "undetermined"
        result["reason"] = exc.message
    result["verdict"] = verdict
    result["explanation"] = ADVICE[verdict]
    result["what_to_do"] = _what_to_do(server, facts, channel, verdict, result.get("gtid", ""))
    _note_keyless_table(facts, channel, result)
    return result


KEYLESS_ADVICE = (
    "{table} has no primary key or NOT NULL unique key: the replica finds its rows by "
    "comparing whole rows, so 'not found' also means a row that differs in any column, "
    "and a transaction applied twice or skipped on it goes unnoticed until an error like "
    "this one. ")


def _note_keyless_table(facts: Facts, channel: ReplicaStatus, result: dict[str, Any]) -> None:
    """Say so when the failing event's table has no key a row can be identified by."""
    name = result.get("table")
    if not name:
        match = _TABLE.search(channel.last_sql_error)
        name = f"{match.group(1)}.{match.group(2)}" if match else ""
    if not name or "." not in name:
        return
    schema, table_name = name.split(".", 1)
    table = facts.table(schema, table_name)
    if table is None:
        return
    result["table"] = name
    result["table_has_key"] = table.row_key is not None
    if table.row_key is None:
        result["explanation"] = KEYLESS_ADVICE.format(table=name) + result["explanation"]
        result["what_to_do"].append(
            f"Give {name} a primary key (see its keyless_table finding), on the master, "
            "once replication runs again: later stops on it can then be told apart.")


def _strict_mode_stop(facts: Facts, channel: ReplicaStatus) -> tuple[str, str, str]:
    """MariaDB's strict mode refused a GTID its own binlog has already passed.

    With log_slave_updates the replica logs what it applies, in the same two-phase
    commit as the data: a binlog that holds a later GTID of the domain than the
    position says the position is behind the data (no row needs to be looked at).
    """
    match = _STRICT.search(channel.last_sql_error)
    if match is None:
        return "undetermined", "", "the error names no GTIDs"
    refused = match.group(1)
    domain = refused.split("-", 1)[0]
    binlog = {p.split("-", 1)[0]: p for p in (facts.var("gtid_binlog_pos") or "").split(",")
              if p.strip()}
    logged = binlog.get(domain, "")
    if logged and logged.split("-")[1] != refused.split("-")[1]:
        return ("undetermined", refused,
                f"strict mode refused {refused}: this replica's binlog ends domain {domain} "
                f"with {logged}, written by another server id (local writes on the replica, "
                "or another master): an errant transaction, not a lost position update")
    if logged and int(logged.rsplit("-", 1)[1]) >= int(refused.rsplit("-", 1)[1]):
        return ("position_behind_data", logged,
                f"the master's transaction {refused} is next by the position "
                f"({facts.var('gtid_slave_pos')}), but this replica's own binlog already "
                f"holds {logged} of domain {domain}: it applied and logged those "
                "transactions, then lost the position update")
    return ("undetermined", refused,
            f"strict mode refused {refused}; the replica's binlog has "
            f"{logged or 'nothing'} in domain {domain}")


def _failing_event(facts: Facts, channel: ReplicaStatus,
                   run_on_host: RunOnHost | None) -> RowEvent:
    end = _END_POS.search(channel.last_sql_error)
    if end is None:
        raise HotcopyError("the error names no end_log_pos of the failing event")
    table_match = _TABLE.search(channel.last_sql_error)
    table = (table_match.group(1), table_match.group(2)) if table_match else None
    if run_on_host is None:
        raise HotcopyError("no command access to the replica's host to read its relay log")
    basename = facts.var("relay_log_basename") or ""
    if not basename or not channel.relay_log_file:
        raise HotcopyError("the replica reports no relay log file")
    decoder = facts.flavor.binlog_decoder()
    if run_on_host(remote.argv("missing_tools.sh", decoder)).strip():
        raise HotcopyError(f"{decoder} is not installed on the replica's host")
    directory = posixpath.dirname(basename)
    files = _relay_files(facts, run_on_host, directory, channel.relay_log_file)
    for index, path in enumerate(files[:MAX_RELAY_FILES]):
        start = channel.relay_log_pos if index == 0 else 4
        argv = facts.flavor.decode_relay_log(path, start)
        text = run_on_host(remote.argv("head_bytes.sh", str(DECODE_LIMIT_BYTES), *argv))
        event = find_row_event(text, int(end.group(1)), table)
        if event is not None and event.rows:
            return event
    raise HotcopyError(f"the event ending at {end.group(1)} was not found in the relay log "
                       f"from {channel.relay_log_file}:{channel.relay_log_pos}")


def _relay_files(facts: Facts, run_on_host: RunOnHost, directory: str, current: str) -> list[str]:
    """The current relay log file and the ones after it, from the relay log index."""
    first = posixpath.join(directory, posixpath.basename(current))
    index = facts.var("relay_log_index") or ""
    if not index:
        return [first]
    listed = [posixpath.join(directory, posixpath.basename(line.strip()))
              for line in run_on_host(["cat", index]).splitlines() if line.strip()]
    return listed[listed.index(first):] if first in listed else [first]


def _row_state(server: Server, event: RowEvent, before: Image | None,
               after: Image | None) -> dict[str, Any]:
    columns = server.query(sql.table_columns(event.schema, event.table))
    if not columns:
        raise HotcopyError(f"table {event.schema}.{event.table} does not exist on the replica")
    by_position = {int(c["ORDINAL_POSITION"]): c for c in columns}
    key = _key_columns(server, event, by_position)
    state = {"insert": _insert_state, "delete": _delete_state, "update": _update_state}
    return state[event.kind](server, event, by_position, key, before, after)


def _key_columns(server: Server, event: RowEvent, by_position: dict[int, Any]) -> list[int]:
    names = {str(c["COLUMN_NAME"]): p for p, c in by_position.items()}
    keys: dict[str, list[int]] = {}
    for row in server.query(sql.unique_keys(event.schema, event.table)):
        keys.setdefault(str(row["INDEX_NAME"]), []).append(names[str(row["COLUMN_NAME"])])
    if keys:
        return next(iter(keys.values()))  # the primary key is listed first
    return sorted(by_position)  # no unique key: the whole row is the key


def _compare(server: Server, event: RowEvent, by_position: dict[int, Any], key: list[int],
             image: Image) -> dict[str, Any]:
    """Look the image's key up; 'absent', or 'same'/'different' with differing columns."""
    def triple(position: int, *, lookup: bool) -> tuple[str, str, Any]:
        column = by_position[position]
        value = image[position]
        stored = value.for_column("unsigned" in str(column["COLUMN_TYPE"]).lower())
        kind = value.kind
        if kind == "bytes":
            # Found through the index by text; compared byte for byte.
            kind, stored = ("plain", stored.decode()) if lookup else ("binary", stored)
        return (str(column["COLUMN_NAME"]), kind, stored)

    usable = [p for p in sorted(image) if p in by_position and image[p].kind != "unknown"]
    if any(p not in usable for p in key):
        raise HotcopyError("a key column of the failing row could not be decoded")
    values = [triple(p, lookup=False) for p in usable]
    row = server.one(sql.compare_row(event.schema, event.table,
                                     [triple(p, lookup=True) for p in key], values))
    key_text = ", ".join(f"{by_position[p]['COLUMN_NAME']}={_shown(image[p].value)}"
                         for p in key)
    if row is None:
        return {"key": key_text, "found": False}
    differing = [name for (name, _, _), match in zip(values, row.values(), strict=False)
                 if not match]
    return {"key": key_text, "found": True, "differing_columns": differing,
            "unchecked_columns": len(image) - len(usable)}


def _shown(value: Any) -> str:
    if isinstance(value, bytes):
        return repr(value.decode(errors="replace"))
    return str(value)


def _insert_state(server: Server, event: RowEvent, cols: dict[int, Any], key: list[int],
                  before: Image | None, after: Image | None) -> dict[str, Any]:
    seen = _compare(server, event, cols, key, after or {})
    if not seen["found"]:
        return {**seen, "state": "not_applied"}
    return {**seen, "state": "different" if seen["differing_columns"] else "applied"}


def _delete_state(server: Server, event: RowEvent, cols: dict[int, Any], key: list[int],
                  before: Image | None, after: Image | None) -> dict[str, Any]:
    seen = _compare(server, event, cols, key, before or {})
    if not seen["found"]:
        return {**seen, "state": "gone"}
    return {**seen, "state": "different" if seen["differing_columns"] else "not_applied"}


def _update_state(server: Server, event: RowEvent, cols: dict[int, Any], key: list[int],
                  before: Image | None, after: Image | None) -> dict[str, Any]:
    new = _compare(server, event, cols, key, after or {})
    if new["found"] and not new["differing_columns"]:
        return {**new, "state": "applied"}
    old = _compare(server, event, cols, key, before or {})
    if old["found"]:
        return {**old, "state": "different" if old["differing_columns"] else "not_applied"}
    if new["found"]:
        return {**new, "state": "different"}
    return {**old, "state": "missing"}


def _verdict(kind: str, states: list[str]) -> str:
    if not states:
        return "undetermined"
    if "different" in states:
        return "conflicting_row"
    if "missing" in states:
        return "data_missing"
    if kind == "delete" and all(s == "gone" for s in states):
        return "already_deleted_or_lost"
    if "applied" in states and all(s in ("applied", "not_applied") for s in states):
        return "position_behind_data"
    return "undetermined"


def _what_to_do(server: Server, facts: Facts, channel: ReplicaStatus, verdict: str,
                gtid: str) -> list[str]:
    reseed = (f"re-seed {server.name} from a healthy replica: hotcopy clone --source "
              f"<healthy replica> --target {server.name}")
    engines = [facts.position_engines.get(t, "") for t in facts.flavor.position_tables()]
    if all(e.lower() == "innodb" for e in engines if e):
        first = ("The position table is transactional: a crash alone does not do this; look "
                 "for another cause (a restore, a manual position change, writes on the "
                 "replica).")
    else:
        first = "Make the position transactional first (see the position-table finding)."
    steps = [first, f"Safest: {reseed}." if verdict == "position_behind_data"
             else f"{reseed[0].upper()}{reseed[1:]}."]
    if verdict == "position_behind_data" and gtid:
        current = facts.var(facts.flavor.gtid_variable()) or ""
        statements = "; ".join(show_sql(s) for s in
                               facts.flavor.mark_transaction_applied(gtid, current))
        why = (f"every row of {gtid} checked above is already present"
               if channel.last_sql_errno != ER_GTID_STRICT_OUT_OF_ORDER
               else "this replica's binlog shows it was applied here")
        steps.append(f"Or, since {why}, move the position to {gtid}: {statements}; if it "
                     "stops again, run the audit again (never a blind skip).")
    return steps
