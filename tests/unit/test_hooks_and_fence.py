"""Hooks run real commands with the job's environment; the fence block edits a cnf file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hotcopy.config import Config
from hotcopy.errors import ConfigError, ExitCode
from hotcopy.hooks import HookFailed, run_hook
from hotcopy.hosts import LocalExecutor
from hotcopy.mysql import fence


class Recorder:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self.warnings: list[str] = []

    def step_started(self, name: str, title: str) -> None: ...
    def step_finished(self, name: str, outcome: str, seconds: float, detail: str = "") -> None: ...
    def progress(self, done: int, total: int | None, rate: float | None) -> None: ...
    def pacing(self, text: str) -> None: ...

    def note(self, text: str) -> None:
        self.notes.append(text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)


def _config(**hooks: Any) -> Config:
    return Config.model_validate({
        "shard": {"name": "s1"}, "mysql": {"option_file": "/nonexistent.cnf"},
        "servers": {"db1": {"host": "127.0.0.1", "datadir": "/d", "defaults_file": "/d.cnf"}},
        "hooks": hooks})


def test_a_hook_gets_the_job_environment(tmp_path: Path) -> None:
    out = tmp_path / "env"
    config = _config(post_switchover=["sh", "-c", f"env | grep ^HOTCOPY_ | sort > {out}"])
    run_hook(config, "post_switchover", {"HOTCOPY_JOB_ID": "j1", "HOTCOPY_NEW_MASTER": "db2"},
             Recorder())
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert env == {"HOTCOPY_HOOK": "post_switchover", "HOTCOPY_JOB_ID": "j1",
                   "HOTCOPY_NEW_MASTER": "db2", "HOTCOPY_SHARD": "s1"}


def test_a_failing_pre_hook_refuses_with_its_stderr() -> None:
    config = _config(pre_failover=["sh", "-c", "echo proxy says no >&2; exit 3"])
    with pytest.raises(HookFailed, match="exit status 3: proxy says no") as caught:
        run_hook(config, "pre_failover", {}, Recorder())
    assert caught.value.exit_code is ExitCode.REFUSED


def test_a_failing_post_hook_only_warns() -> None:
    recorder = Recorder()
    run_hook(_config(post_failover=["false"]), "post_failover", {}, recorder)
    assert recorder.warnings and "exit status 1" in recorder.warnings[0]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_hung_hook_is_killed_with_its_children(tmp_path: Path) -> None:
    child = tmp_path / "child"
    config = _config(pre_switchover=["sh", "-c", f"sleep 300 & echo $! > {child}; wait"],
                     hook_timeout_s=3)
    with pytest.raises(HookFailed, match=r"did not finish within 3s"):
        run_hook(config, "pre_switchover", {}, Recorder())
    # The whole process group got SIGKILL; the kernel ends (and init reaps) the orphaned
    # sleep asynchronously, so a loaded machine may show it for a moment longer.
    pid = int(child.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)


def test_a_missing_program_is_a_hook_failure() -> None:
    with pytest.raises(HookFailed, match="cannot run"):
        run_hook(_config(pre_clone=["/nonexistent/hook"]), "pre_clone", {}, Recorder())


def test_no_hook_configured_runs_nothing() -> None:
    recorder = Recorder()
    run_hook(_config(), "pre_switchover", {}, recorder)
    assert recorder.notes == [] and recorder.warnings == []


def test_hook_argv_must_name_a_program(tmp_path: Path) -> None:
    from hotcopy.config import load

    option_file = tmp_path / "admin.cnf"
    option_file.write_text("[client]\n")
    option_file.chmod(0o600)
    path = tmp_path / "c.toml"
    path.write_text(f'[shard]\nname = "s"\n[mysql]\noption_file = "{option_file}"\n'
                    '[servers.a]\nhost = "h"\ndatadir = "/d"\ndefaults_file = "/c"\n'
                    '[hooks]\npre_switchover = ["", "x"]\n')
    with pytest.raises(ConfigError, match=r"hooks\.pre_switchover"):
        load(path)


def test_fence_appends_once_and_is_recognised(tmp_path: Path) -> None:
    cnf = tmp_path / "my.cnf"
    original = "[mysqld]\nserver_id = 1\nport = 3306\n"
    cnf.write_text(original)
    assert fence.fence_config(LocalExecutor(), str(cnf))
    assert fence.fence_config(LocalExecutor(), str(cnf))
    text = cnf.read_text()
    assert text.startswith(original) and text.count(fence.BEGIN) == 1
    assert "[mysqld]\nread_only = 1\n" in text.removeprefix(original)


def test_fence_of_an_unreadable_file_reports_false(tmp_path: Path) -> None:
    assert not fence.fence_config(LocalExecutor(), str(tmp_path / "missing.cnf"))
