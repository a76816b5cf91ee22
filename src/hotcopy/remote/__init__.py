"""The shell programs hotcopy runs on hosts, one ``.sh`` file each, shipped in the package.

They are passed to the host's ``sh -c`` as text with their arguments (never interpolated),
so nothing has to be installed on the hosts beyond the tools they call.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hotcopy.hosts.base import Executor


@cache
def script(name: str) -> str:
    """The text of ``name`` (e.g. ``probe_listen.sh``) from this package."""
    return resources.files(__package__).joinpath(name).read_text()


def argv(name: str, *args: str, interpreter: str = "sh") -> list[str]:
    """``sh -c SCRIPT NAME ARGS...``: run a packaged script with its arguments (bash
    for the few that need its pipefail or arrays)."""
    return [interpreter, "-c", script(name), name, *args]


def missing_tools(executor: Executor, tools: Sequence[str]) -> list[str]:
    """The tools not on the host's PATH, in one round trip (ssh costs ~0.1 s each)."""
    if not tools:
        return []
    # The script itself always succeeds: a failure is the host's (ssh, sudo), not a tool.
    return executor.run(argv("missing_tools.sh", *tools), timeout=60).stdout.split()
