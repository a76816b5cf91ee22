"""The command line: parse, call a workflow, render. No logic lives here.

One module per family of commands; importing them registers their commands on the
group defined in ``base``.
"""

from __future__ import annotations

from hotcopy.cli import agent, jobs, promotion, servers  # noqa: F401  (registers commands)
from hotcopy.cli.base import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="hotcopy")
