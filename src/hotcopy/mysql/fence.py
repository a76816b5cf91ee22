"""Fencing a deposed master: it must not take writes if it comes back.

A master that died may be restarted by its init system or a well-meaning colleague;
started writable, it would accept writes the new master never sees. Fencing is two
layers: ``read_only=ON`` now (when it answers SQL), and a marked ``[mysqld]
read_only = 1`` block appended to its defaults file (when its host is reachable), so a
restart comes up read-only too. ``hotcopy rejoin`` keeps the block: a replica should
come up read-only as well; whoever promotes the server by hand removes it.
"""

from __future__ import annotations

import logging

from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor

log = logging.getLogger(__name__)

BEGIN = "# BEGIN hotcopy fence: this server was deposed as master; `hotcopy rejoin` removes it"
END = "# END hotcopy fence"
BLOCK = f"\n{BEGIN}\n[mysqld]\nread_only = 1\n{END}\n"


def is_fenced(text: str) -> bool:
    return BEGIN in text


def fenced(text: str) -> str:
    """The defaults file with the fence block at its end (once)."""
    return text if is_fenced(text) else text.rstrip("\n") + "\n" + BLOCK


def fence_config(executor: Executor, defaults_file: str) -> bool:
    """Append the block; False when the file cannot be read or written (host down)."""
    try:
        text = executor.read_file(defaults_file).decode()
        if not is_fenced(text):
            executor.write_file(defaults_file, fenced(text).encode(), mode=0o644)
    except (HotcopyError, OSError) as exc:
        log.warning("cannot fence %s on %s: %s", defaults_file, executor.name, exc)
        return False
    return True
