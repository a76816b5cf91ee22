"""Promotion's verify waits for a repointed replica's threads, against a slow master.

Run R2 (2026-12-02) failed `hotcopy rejoin replica3` in its verify step: replica3 already
held every GTID, so the wait for its position returned at once, and its IO thread, told
START SLAVE 3 ms before, still said "Connecting". Here the master's logins for the
replication account are held for a few seconds by a proxy, so the IO thread is certain
to be connecting when verify first looks; the rejoin must wait for it, not fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.config import load
from hotcopy.mysql import replication, repoint
from hotcopy.runtime import Runtime
from hotcopy.sandbox import SandboxInfo
from hotcopy.sandbox.layout import REPL_USER
from tests.integration.conftest import own_sandbox
from tests.integration.helpers import hotcopy, runtime, wait_replicating
from tests.integration.login_delay_proxy import LoginDelayProxy
from tests.integration.test_refusals import edited_config

HOLD_S = 4.0


@pytest.fixture(scope="module")
def shard() -> Iterator[SandboxInfo]:
    with own_sandbox(seed_rows=200) as info:
        yield info


def test_rejoin_waits_for_an_io_thread_still_connecting(shard: SandboxInfo,
                                                        tmp_path: Path) -> None:
    rt = runtime(shard)
    master = shard.master
    with LoginDelayProxy(rt.address(master).port, REPL_USER) as proxy:
        config = edited_config(shard, tmp_path, {(f"servers.{master}", "port"):
                                                 str(proxy.port)})
        # Every replica reaches the master through the proxy, as the edited config says.
        through_proxy = Runtime(load(config))
        for name in shard.replicas:
            repoint.point_at(through_proxy, name, master)
            wait_replicating(rt.server(name), rt.server(master))
        through_proxy.close()
        detached = shard.replicas[-1]
        server = rt.server(detached)
        server.execute(server.flavor.stop_replica())
        server.execute(("RESET SLAVE ALL", ()))
        assert replication.single_channel(server) is None

        proxy.arm(HOLD_S)
        proc = hotcopy("rejoin", "--config", str(config), detached, "--json")
        # Before the fix: exit 1, "verify: replica2: replication not running (IO thread
        # Connecting, SQL thread Yes)", and the rejoin rolled back.
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert proxy.held, "the replica's login was never held: the test proved nothing"
        proxy.arm(0.0)
        assert repoint.replicates_from(server, "127.0.0.1", proxy.port)
        wait_replicating(server, rt.server(master))
    rt.close()
