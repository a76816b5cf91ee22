"""The shell programs hotcopy runs on hosts, one ``.sh`` file each, shipped in the package.

They are passed to the host's ``sh -c`` as text with their arguments (never interpolated),
so nothing has to be installed on the hosts beyond the tools they call.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def script(name: str) -> str:
    """The text of ``name`` (e.g. ``probe_listen.sh``) from this package."""
    return resources.files(__package__).joinpath(name).read_text()


def argv(name: str, *args: str) -> list[str]:
    """``sh -c SCRIPT NAME ARGS...``: run a packaged script with its arguments."""
    return ["sh", "-c", script(name), name, *args]
