"""A real local MariaDB shard for the demo and the tests: one master, N replicas.

Each server gets its own btrfs filesystem (a sparse image, loop-mounted) whose datadir
is a subvolume, so hotcopy's btrfs snapshots run against exactly what production has.
Everything a sandbox makes is recorded in DIR/sandbox.json *before* it is made, so
``down`` can undo a crashed ``up``; nothing global is reused, so several sandboxes can
run side by side in different directories.

With ``topology="netns"`` every server is a host of its own: a network namespace with
an address on the sandbox's bridge, its own sshd, and a config that reaches it over ssh
(see multihost.py); filesystems stay shared.
"""

from hotcopy.sandbox.core import (
    DEFAULT_IMAGE_SIZE,
    SandboxInfo,
    down,
    info,
    status,
    up,
)

__all__ = ["DEFAULT_IMAGE_SIZE", "SandboxInfo", "down", "info", "status", "up"]
