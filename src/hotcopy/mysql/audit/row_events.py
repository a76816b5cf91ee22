"""Row events as ``mariadb-binlog``/``mysqlbinlog -vv`` print them, read back into values.

The decoder prints each row of a row event as commented pseudo-SQL::

    #261124  4:43:04 server id 1  end_log_pos 2497668 CRC32 0x5d58d19a \tUpdate_rows: ...
    ### UPDATE `app`.`load_orders`
    ### WHERE
    ###   @1=9856 /* LONGINT meta=0 nullable=0 is_null=0 */
    ### SET
    ###   @1=9856 /* LONGINT meta=0 nullable=0 is_null=0 */

Columns are positions (@1 is the first column); the comment names the binlog type,
which decides how a value compares with the stored one. Strings are printed raw
between quotes with only control bytes escaped as \\xNN, so a value whose text is
ambiguous (or was not valid UTF-8 on the way here) is marked "unknown" and left out
of any verdict rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

_HEADER = re.compile(r"^#\d{6}\s+\d{1,2}:\d\d:\d\d\s+server id\s+\d+\s+end_log_pos\s+(\d+)\s")
_TABLE = re.compile(r"^### (INSERT INTO|UPDATE|DELETE FROM) `((?:[^`]|``)+)`\.`((?:[^`]|``)+)`")
_VALUE = re.compile(r"^###\s+@(\d+)=(.*)$")
_COMMENT = re.compile(r"/\* (\S+?)(?:\(.*?\))? meta=\d+ nullable=\d is_null=(\d) \*/$")
_MYSQL_GTID = re.compile(r"GTID_NEXT\s*=\s*'([^']+)'")
_ROW_EVENTS = {"Write_rows": "insert", "Update_rows": "update", "Delete_rows": "delete"}
_INTEGERS = {"TINYINT", "SHORTINT", "MEDIUMINT", "INT", "LONGINT", "YEAR"}
_NUMBERS = {"DECIMAL", "NEWDECIMAL", "FLOAT", "DOUBLE"}
_TEMPORAL = {"DATE", "DATETIME", "TIME", "NEWDATE"}
_NUMBER_OF = {"ENUM", "SET", "BIT"}


@dataclass(frozen=True)
class Value:
    """One column of one row image: ``kind`` says how to compare it (see catalog)."""

    position: int
    kind: str  # plain | bytes | timestamp | number_of | unknown
    value: Any
    binlog_type: str
    unsigned_alternative: int | None = None

    def for_column(self, unsigned: bool) -> Any:
        if unsigned and self.unsigned_alternative is not None:
            return self.unsigned_alternative
        return self.value


Image = dict[int, Value]


@dataclass
class RowChange:
    before: Image | None
    after: Image | None


@dataclass
class RowEvent:
    kind: str  # insert | update | delete
    schema: str
    table: str
    end_log_pos: int
    gtid: str
    rows: list[RowChange] = field(default_factory=list)


def _unquote_identifier(text: str) -> str:
    return text.replace("``", "`")


def _string(raw: str) -> tuple[str, Any]:
    inner = raw[1:-1]
    if "\ufffd" in inner:
        return "unknown", None
    parts = re.split(r"(\\x[0-9a-fA-F]{2})", inner)
    escapes = [p for p in parts if re.fullmatch(r"\\x[0-9a-fA-F]{2}", p)]
    if any(int(e[2:], 16) >= 0x20 for e in escapes):
        return "unknown", None  # a literal backslash-x in the data: ambiguous
    data = b"".join(bytes([int(p[2:], 16)]) if p in escapes else p.encode() for p in parts)
    return "bytes", data


def _number(base: str, raw: str) -> tuple[str, Any, int | None] | None:
    """Numeric binlog types: integers (with the unsigned reading), decimals, epochs, sets."""
    unsigned = re.fullmatch(r"(-?\d+) \((\d+)\)", raw)
    if base in _INTEGERS and unsigned:
        return "plain", int(unsigned.group(1)), int(unsigned.group(2))
    kinds = {**dict.fromkeys(_INTEGERS, "int"), **dict.fromkeys(_NUMBERS, "decimal"),
             "TIMESTAMP": "timestamp", **dict.fromkeys(_NUMBER_OF, "number_of")}
    kind = kinds.get(base)
    if kind is None:
        return None
    if kind == "number_of":
        return "number_of", int(raw[2:-1], 2) if raw.startswith("b'") else int(raw), None
    if kind == "int":
        return "plain", int(raw), None
    return ("timestamp" if kind == "timestamp" else "plain"), Decimal(raw), None


def _typed(base: str, raw: str) -> tuple[str, Any, int | None]:
    """(kind, value, unsigned alternative) of a non-NULL literal of a binlog type."""
    number = _number(base, raw)
    if number is not None:
        return number
    if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
        kind, value = _string(raw)
        if kind == "bytes" and base in _TEMPORAL:
            return "plain", value.decode(), None
        return kind, value, None
    return "unknown", None, None


def parse_value(position: int, text: str) -> Value:
    """``9856 /* LONGINT meta=0 nullable=0 is_null=0 */`` -> Value."""
    cut = text.rfind(" /* ")
    comment = _COMMENT.search(text[cut + 1:]) if cut >= 0 else None
    if comment is None:
        return Value(position, "unknown", None, "")
    raw = text[:cut].strip()
    binlog_type, is_null = comment.group(1).upper(), comment.group(2) == "1"
    if is_null or raw == "NULL":
        return Value(position, "plain", None, binlog_type)
    try:
        kind, value, alternative = _typed(binlog_type.split("/")[0], raw)
    except (ValueError, InvalidOperation):
        return Value(position, "unknown", None, binlog_type)
    return Value(position, kind, value, binlog_type, alternative)


class _Reader:
    """Walks the decoder's output once, remembering the current GTID."""

    def __init__(self, end_log_pos: int, table: tuple[str, str] | None) -> None:
        self.end_log_pos = end_log_pos
        self.table = table
        self.gtid = ""
        self.event: RowEvent | None = None
        self.done = False
        self._in_target = False
        self._image: Image | None = None
        self._section = ""

    def feed(self, line: str) -> None:
        header = _HEADER.match(line)
        if header:
            self._finish_row()
            if self._in_target:
                self.done = True
                return
            self._header(int(header.group(1)), line.rsplit("\t", 1)[-1])
            return
        mysql_gtid = _MYSQL_GTID.search(line)
        if mysql_gtid and not line.startswith("###"):
            self.gtid = mysql_gtid.group(1)
        if self._in_target and line.startswith("###"):
            self._row_line(line)
        elif self._in_target and line.startswith("# at "):
            self._finish_row()

    def _header(self, end_log_pos: int, description: str) -> None:
        words = description.split()
        if words and words[0] == "GTID" and len(words) > 1:
            self.gtid = words[1]
            return
        name = words[0].rstrip(":") if words else ""
        kind = next((k for prefix, k in _ROW_EVENTS.items() if name.startswith(prefix)), None)
        if kind is not None and end_log_pos == self.end_log_pos:
            self._in_target = True
            self.event = RowEvent(kind, "", "", end_log_pos, self.gtid)

    def _row_line(self, line: str) -> None:
        assert self.event is not None
        table = _TABLE.match(line)
        if table:
            self._finish_row()
            self.event.schema = _unquote_identifier(table.group(2))
            self.event.table = _unquote_identifier(table.group(3))
            self.event.rows.append(RowChange(None, None))
            return
        if line.strip() in ("### WHERE", "### SET"):
            self._finish_row()
            self._section = line.strip()[4:]
            self._image = {}
            return
        value = _VALUE.match(line)
        if value and self._image is not None:
            position = int(value.group(1))
            self._image[position] = parse_value(position, value.group(2))

    def _finish_row(self) -> None:
        if self._image is None or self.event is None or not self.event.rows:
            self._image = None
            return
        row = self.event.rows[-1]
        if self._section == "WHERE":
            row.before = self._image
        else:
            row.after = self._image
        self._image = None


def find_row_event(text: str, end_log_pos: int,
                   table: tuple[str, str] | None = None) -> RowEvent | None:
    """The row event that ends at ``end_log_pos`` of the master's binlog (and its GTID)."""
    reader = _Reader(end_log_pos, table)
    for line in text.splitlines():
        reader.feed(line)
        if reader.done:
            break
    reader._finish_row()
    event = reader.event
    if event is None:
        return None
    if table and (event.schema, event.table) != table:
        return None
    return event
