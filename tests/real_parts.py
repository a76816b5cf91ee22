"""Real parts the tests need (root, btrfs, loop devices, zfs-fuse, tools), and what a
missing one means.

On a developer's machine a missing part skips the tests that need it, with the reason.
Under ``CI=true`` or ``HOTCOPY_REQUIRE_REAL_PARTS=1`` it fails them instead: a CI run
that skipped its integration tier would report green without having tested anything.
Tests declare what they need with ``needs(reason_or_none)``; the root conftest turns
the mark into a skip or a failure before any fixture (no sandbox is started for them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

import pytest

SWITCH = "HOTCOPY_REQUIRE_REAL_PARTS"
MARK = "real_part"


def required() -> bool:
    """Whether a missing real part fails the run (CI, or the documented switch)."""
    ci = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
    return ci or os.environ.get(SWITCH, "").strip() == "1"


def missing_tools(tools: Iterable[str], what: str) -> str | None:
    """Why ``what`` cannot run here when one of ``tools`` is not on PATH, else None."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return None
    return f"{what} need {', '.join(missing)}: run scripts/bootstrap.sh"


def needs(reason: str | None) -> pytest.MarkDecorator:
    """Mark tests that cannot run when ``reason`` is not None (skip, or fail under CI)."""
    return pytest.mark.real_part(reason=reason)


def verdict(reason: str) -> None:
    """Skip, or fail loudly under CI: called in setup, before any fixture runs."""
    if required():
        pytest.fail(f"a real part is missing and {SWITCH}/CI requires it: {reason}",
                    pytrace=False)
    pytest.skip(reason)
