"""The new target catches up without an fsync per commit, and gets its own settings back.

Real clones of replica1 onto replica2 of the session sandbox, whose servers run with
innodb_flush_log_at_trx_commit = 1 and sync_binlog = 1. The clone is stopped
(SIGSTOP) just before catch_up to read the target as it is then, or SIGKILLed after
change_master and rolled back with the relaxed target's mysqld dead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

from hotcopy.mysql.server import Server
from hotcopy.sandbox import SandboxInfo

from .helpers import (
    clone_json,
    has_schema,
    hotcopy,
    leftovers,
    mark_local,
    runtime,
    stopped,
    wait_for,
    wait_replicating,
)

SOURCE, TARGET = "replica1", "replica2"
SETTINGS = ("innodb_flush_log_at_trx_commit", "sync_binlog")


def _settings(server: Server) -> dict[str, int]:
    server.close()  # a fresh session: the server may have been restarted meanwhile
    return {name: int(server.variable(name) or 0) for name in SETTINGS}


def _show(info: SandboxInfo, job: str) -> dict[str, Any]:
    shown = hotcopy("show", "--config", str(info.config_path), job, "--json")
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def _jobs(info: SandboxInfo) -> list[dict[str, Any]]:
    return list(json.loads(hotcopy("jobs", "--config", str(info.config_path), "--json").stdout))


def test_the_target_catches_up_relaxed_and_is_durable_again_before_verify(
        sandbox: SandboxInfo) -> None:
    rt = runtime(sandbox)
    target = rt.server(TARGET)
    assert _settings(target) == {"innodb_flush_log_at_trx_commit": 1, "sync_binlog": 1}
    env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}
    env["HOTCOPY_FAULT"] = "pause-before:catch_up"
    child = subprocess.Popen([sys.executable, "-m", "hotcopy", "clone", "--config",
                              str(sandbox.config_path), "--source", SOURCE, "--target", TARGET,
                              "--yes", "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert wait_for(lambda: stopped(child.pid) or child.poll() is not None,
                        timeout=300, interval=0.05), "the clone never reached catch_up"
        assert child.poll() is None, child.communicate()[1][-3000:]
        # Replicating from the master on the new datadir, without an fsync per commit;
        # the journal owes the target its own values.
        assert _settings(target) == {"innodb_flush_log_at_trx_commit": 2, "sync_binlog": 0}
        job = _jobs(sandbox)[0]["job"]
        owed = sorted(u["label"] for u in _show(sandbox, job)["outstanding_undo"]
                      if u["action"] == "mysql.set_global_if_running")
        assert owed == [f"set {name} back to 1 on {TARGET} (if its mysqld still runs)"
                        for name in SETTINGS], owed
        os.kill(child.pid, signal.SIGCONT)
        out, err = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert report["state"] == "committed"
    assert _settings(target) == {"innodb_flush_log_at_trx_commit": 1, "sync_binlog": 1}
    relaxed = [u for u in report["undo"] if u["action"] == "mysql.set_global_if_running"]
    assert len(relaxed) == 2 and all(u["state"] == "done" for u in relaxed), relaxed
    # Restored when catch_up ended, so verify and the crash-safety audit judged the
    # target's own settings, not the relaxed ones.
    steps = [s["name"] for s in report["steps"]]
    assert steps.index("catch_up") < steps.index("verify") < steps.index("crash_safety")
    assert report["verified"] == "checksum"
    assert leftovers(sandbox) == []
    rt.close()


def test_rolled_back_after_the_relaxed_target_died_nothing_is_left_owed(
        sandbox: SandboxInfo) -> None:
    rt = runtime(sandbox)
    target, master = rt.server(TARGET), rt.server(sandbox.master)
    mark_local(target, "fast_catchup_old_target")
    proc, _ = clone_json(sandbox, SOURCE, TARGET, env={"HOTCOPY_FAULT": "kill-after:change_master"})
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert _settings(target)["innodb_flush_log_at_trx_commit"] == 2
    # The new target's mysqld dies too: the relaxed values went with it, and the
    # rollback must not stop on restoring them (only a running server has them).
    target.close()
    rt.mysqld(TARGET).kill()
    job = _jobs(sandbox)[0]["job"]
    back = hotcopy("rollback", "--config", str(sandbox.config_path), job, "--json")
    assert back.returncode == 0, back.stdout[-2000:] + back.stderr[-3000:]
    assert json.loads(back.stdout)["state"] == "rolled-back"
    shown = _show(sandbox, job)
    assert shown["outstanding_undo"] == []
    relaxed = [u for u in shown["undo"] if u["action"] == "mysql.set_global_if_running"]
    assert len(relaxed) == 2 and all(u["state"] == "done" for u in relaxed), relaxed
    wait_replicating(target, master)
    assert has_schema(target, "fast_catchup_old_target"), "target must be on its old datadir"
    assert _settings(target) == {"innodb_flush_log_at_trx_commit": 1, "sync_binlog": 1}
    assert leftovers(sandbox) == []
    rt.close()
