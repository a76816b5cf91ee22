"""Review (Low): the new replica's CHANGE MASTER carries the source's delay and heartbeat
(and TLS: see tests/unit/test_review_change_master.py; the sandbox has no certificates).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hotcopy.mysql import replication
from hotcopy.runtime import Runtime
from hotcopy.sandbox import SandboxInfo

from .helpers import clone_json, runtime, wait_for, wait_replicating

SOURCE, TARGET = "replica1", "replica2"


def channel(rt: Runtime, name: str) -> dict[str, object]:
    server = rt.server(name)
    server.close()
    return server.one(("SHOW ALL SLAVES STATUS", ())) or {}


def reconfigure(rt: Runtime, name: str, clause: str) -> None:
    session = rt.server(name).new_session()
    try:
        for sql in ("STOP SLAVE", f"CHANGE MASTER TO {clause}", "START SLAVE"):
            session.execute(sql)
    finally:
        session.close()
    assert wait_for(lambda: bool((s := replication.single_channel(rt.server(name)))
                                 and s.running), timeout=30)


@pytest.fixture
def delayed_source(sandbox: SandboxInfo) -> Iterator[Runtime]:
    rt = runtime(sandbox)
    reconfigure(rt, SOURCE, "MASTER_DELAY = 1, MASTER_HEARTBEAT_PERIOD = 7")
    try:
        yield rt
    finally:
        for name in (SOURCE, TARGET):
            reconfigure(rt, name, "MASTER_DELAY = 0, MASTER_HEARTBEAT_PERIOD = 30")
            wait_replicating(rt.server(name), rt.server(sandbox.master))
        rt.close()


def test_delay_and_heartbeat_of_the_source_reach_the_new_replica(
        sandbox: SandboxInfo, delayed_source: Runtime) -> None:
    rt = delayed_source
    assert channel(rt, SOURCE)["SQL_Delay"] == 1
    proc, _ = clone_json(sandbox, SOURCE, TARGET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = channel(rt, TARGET)
    # Before the fix: SQL_Delay 0 and the default heartbeat (slave_net_timeout / 2).
    assert row["SQL_Delay"] == 1, row
    assert float(str(row["Slave_heartbeat_period"])) == 7.0, row
