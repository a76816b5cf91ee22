"""A missing real part skips on a developer's machine and fails under CI.

Proven end to end: pytest runs, in a subprocess, integration tests with a PATH that
lacks every tool; with CI=true (or HOTCOPY_REQUIRE_REAL_PARTS=1) the run must fail and
name the missing tools, without it the tests are skipped. No sandbox is started: the
verdict comes before any fixture.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..real_parts import SWITCH, required

REPO = Path(__file__).resolve().parents[2]
#: One test the integration conftest guards (root, tools, btrfs, loop) and one a module
#: guards itself (zfs-fuse).
GUARDED = {
    "conftest": ("tests/integration/test_sandbox.py::"
                 "test_up_gives_three_running_servers_replicating", "mkfs.btrfs"),
    "module": ("tests/integration/test_zfs.py", "zfs-fuse"),
}


def _pytest(node: str, empty_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", SWITCH)}
    clean.update(env, PATH=str(empty_path))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           node], cwd=REPO, env=clean, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("where", sorted(GUARDED))
@pytest.mark.parametrize("switch", [{"CI": "true"}, {SWITCH: "1"}], ids=["CI", SWITCH])
def test_a_missing_tool_fails_the_run_when_required(tmp_path: Path, where: str,
                                                    switch: dict[str, str]) -> None:
    node, tool = GUARDED[where]
    done = _pytest(node, tmp_path, **switch)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "a real part is missing" in out and tool in out, out[-3000:]
    # A failure in setup is counted as an error: either way nothing passed or skipped.
    assert re.search(r"\d+ (failed|errors?)", out) and not re.search(r"\d+ (passed|skipped)",
                                                                     out), out[-3000:]
    assert "real parts: required" in out, out[-3000:]


@pytest.mark.parametrize("where", sorted(GUARDED))
def test_a_missing_tool_skips_on_a_developer_machine(tmp_path: Path, where: str) -> None:
    node, tool = GUARDED[where]
    done = _pytest(node, tmp_path, CI="false")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert re.search(r"\d+ skipped", out) and tool in out, out[-3000:]
    assert not re.search(r"\d+ (failed|errors?|passed)", out), out[-3000:]


def test_the_switch_is_read_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CI", SWITCH):
        monkeypatch.delenv(name, raising=False)
    assert not required()
    monkeypatch.setenv("CI", "true")
    assert required()
    monkeypatch.setenv("CI", "false")
    assert not required()
    monkeypatch.setenv(SWITCH, "1")
    assert required()
