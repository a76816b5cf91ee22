"""Review finding 9: a source on file/position with a stale gtid_slave_pos.

The source replicates with MASTER_USE_GTID=no and its gtid_slave_pos names a domain the
master's history does not have (left from an old master or set by hand; file/position
replication never corrects it, unlike a stale domain the master sends a Gtid_list for).
Positioning the new replica by that GTID carries a position that is not the data's; the
master's BINLOG_GTID_POS of the executed file/position tells the truth, and the clone
falls back to file/position.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hotcopy.mysql import replication
from hotcopy.mysql.server import Server
from hotcopy.runtime import Runtime
from hotcopy.sandbox import SandboxInfo

from .helpers import clone_json, runtime, wait_for, wait_replicating

SOURCE, TARGET = "replica1", "replica2"


def _exec(rt: Runtime, name: str, *sql: str) -> None:
    session = rt.server(name).new_session()
    try:
        for statement in sql:
            session.execute(statement)
    finally:
        session.close()


@pytest.fixture
def stale_source(sandbox: SandboxInfo) -> Iterator[tuple[Runtime, str]]:
    rt = runtime(sandbox)
    master = rt.server(sandbox.master)
    source = rt.server(SOURCE)
    _exec(rt, sandbox.master, "CREATE DATABASE IF NOT EXISTS review_gtid",
          "CREATE TABLE IF NOT EXISTS review_gtid.t (id INT PRIMARY KEY)")
    wait_replicating(source, master)
    _exec(rt, sandbox.master, *(f"INSERT INTO review_gtid.t VALUES ({i})" for i in range(5)))
    wait_replicating(source, master)
    # A domain the master's history does not have (left from an old master, or set by
    # hand): file/position replication never looks at it, so it stays.
    stale = str(source.scalar(("SELECT @@GLOBAL.gtid_slave_pos", ()))) + ",7-77-10"
    _exec(rt, SOURCE, "STOP SLAVE", "CHANGE MASTER TO MASTER_USE_GTID = no", "START SLAVE")
    settle(source, master)
    _exec(rt, SOURCE, "STOP SLAVE", f"SET GLOBAL gtid_slave_pos = '{stale}'", "START SLAVE")
    settle(source, master)
    assert str(source.scalar(("SELECT @@GLOBAL.gtid_slave_pos", ()))) == stale
    try:
        yield rt, stale
    finally:
        _exec(rt, SOURCE, "STOP SLAVE")
        # gtid_slave_pos back to the truth before GTID positioning, as `audit --fix` does
        truth = rt.server(sandbox.master).scalar((
            "SELECT BINLOG_GTID_POS(%s, %s)",
            tuple(_file_pos(rt))))
        _exec(rt, SOURCE, f"SET GLOBAL gtid_slave_pos = '{truth}'",
              "CHANGE MASTER TO MASTER_USE_GTID = slave_pos", "START SLAVE")
        _exec(rt, sandbox.master, "DROP DATABASE review_gtid")
        settle(source, master)
        rt.server(TARGET).close()
        settle(rt.server(TARGET), master)
        rt.close()


def settle(server: Server, master: Server) -> None:
    """Both threads running (the IO thread shows "Preparing" for a moment), caught up."""
    assert wait_for(lambda: bool((st := replication.single_channel(server)) and st.running),
                    timeout=30), replication.single_channel(server)
    wait_replicating(server, master)


def _file_pos(rt: Runtime) -> tuple[str, int]:
    row = rt.server(SOURCE).one(("SHOW SLAVE STATUS", ())) or {}
    return str(row["Relay_Master_Log_File"]), int(row["Exec_Master_Log_Pos"])


def test_a_stale_gtid_slave_pos_is_not_used_to_position_the_clone(
        sandbox: SandboxInfo, stale_source: tuple[Runtime, str]) -> None:
    rt, stale = stale_source
    proc, document = clone_json(sandbox, SOURCE, TARGET)
    # Before the fix: CHANGE MASTER at GTID {stale}: the new replica was positioned by a
    # state that is not the master's at the data's file/position (phantom domain kept).
    assert proc.returncode == 0, proc.stderr + proc.stdout
    step = next(s for s in document["steps"] if s["name"] == "change_master")
    assert "GTID" not in step["detail"] and "mysql-bin." in step["detail"], step
    assert "is not the master's GTID" in " ".join(proc.stderr.split()), proc.stderr
    target = rt.server(TARGET)
    target.close()
    settle(target, rt.server(sandbox.master))
    assert target.scalar(("SELECT COUNT(*) FROM review_gtid.t", ())) == 5
    _exec(rt, sandbox.master, "INSERT INTO review_gtid.t VALUES (100)")
    wait_replicating(target, rt.server(sandbox.master))
    assert target.scalar(("SELECT COUNT(*) FROM review_gtid.t", ())) == 6
    phantom = stale.rsplit(",", 1)[1]
    assert phantom not in str(target.scalar(("SELECT @@GLOBAL.gtid_slave_pos", ())))
