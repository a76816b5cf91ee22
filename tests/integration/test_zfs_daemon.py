"""The sandbox's zfs-fuse daemon starts even after an earlier one died without cleaning up.

zfs-fuse exits 1, silently, when its pid file exists; a daemon killed with SIGKILL or
crashed leaves that file behind, and every ZFS sandbox after it failed to come up (a CI
run lost both ZFS modules that way). The module owns no pool, so it may stop and start
the daemon: no other module's sandbox lives while it runs.
"""

from __future__ import annotations

import subprocess

from hotcopy.sandbox import zfs as sandbox_zfs

from ..real_parts import missing_tools, needs

pytestmark = needs(missing_tools(["zfs-fuse", "zpool"], "ZFS sandboxes"))


def test_a_stale_pid_file_does_not_stop_the_daemon_from_starting() -> None:
    with sandbox_zfs.daemon_lock():
        sandbox_zfs._stop_daemon_if_idle()
        assert sandbox_zfs._pools() is None, (
            "a zfs-fuse daemon that hotcopy did not start (or one with pools) is running")
        stand_in = subprocess.Popen(["sleep", "60"])  # a live pid that is not zfs-fuse
        try:
            sandbox_zfs.PID_FILE.parent.mkdir(parents=True, exist_ok=True)
            sandbox_zfs.PID_FILE.write_text(f"{stand_in.pid}\n")
            sandbox_zfs.ensure_daemon()
            assert sandbox_zfs._pools() == []
            started = sandbox_zfs._our_daemon_pid()
            assert started is not None and started != stand_in.pid
        finally:
            stand_in.kill()
            stand_in.wait(timeout=10)
            sandbox_zfs._stop_daemon_if_idle()
    assert sandbox_zfs._pools() is None
