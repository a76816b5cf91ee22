"""ServerLayout as MariaDB derives it, and MysqldControl's decisions, without a server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from hotcopy.errors import HotcopyError
from hotcopy.hosts.base import CommandResult, LineCallback
from hotcopy.mysql.connection import ServerAddress
from hotcopy.mysql.mysqld import (
    MysqldControl,
    layout_from_options,
    parse_print_defaults,
    read_layout,
)


class FakeExecutor:
    """Answers commands from a table keyed by argv[0]; records every call."""

    name = "fake"
    is_local = False

    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
            timeout: float | None = 300, env: Mapping[str, str] | None = None) -> CommandResult:
        self.calls.append(tuple(argv))
        code, out, err = self.answers.get(argv[0], (127, "", f"{argv[0]}: not found"))
        result = CommandResult(tuple(argv), code, out, err)
        return result.check(self.name) if check else result

    def stream(self, argv: Sequence[str], on_line: LineCallback, *,
               timeout: float | None = None, check: bool = True) -> CommandResult:
        raise NotImplementedError

    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        raise NotImplementedError

    def read_file(self, path: str) -> bytes:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        return False


def test_later_options_win_and_names_are_normalised() -> None:
    options = parse_print_defaults(
        "--datadir=/a\n--log_bin=x\n--loose-innodb_undo_directory=/u\n--datadir=/b\n"
        "--log-slave-updates\n--log-error=/e\n--skip-log-error\n")
    assert options == {"datadir": "/b", "log-bin": "x", "innodb-undo-directory": "/u",
                       "log-slave-updates": "", "skip-log-error": ""}
    again = parse_print_defaults("--skip-log-bin\n--skip-slave-start\n--log-bin=y\n")
    assert again == {"skip-slave-start": "", "log-bin": "y"}


def test_sandbox_like_layout() -> None:
    options = parse_print_defaults(
        "--user=mysql\n--port=3307\n--datadir=/d/mnt/data/\n--socket=/d/run/s.sock\n"
        "--pid-file=/d/run/mysqld.pid\n--log-error=/d/mysqld.err\n--log-bin=mysql-bin\n"
        "--relay-log=relay-bin\n")
    layout = layout_from_options("/d/my.cnf", options, None)
    assert layout.datadir == "/d/mnt/data"
    assert layout.port == 3307
    assert layout.socket == "/d/run/s.sock"
    assert layout.pid_file == "/d/run/mysqld.pid"
    assert layout.log_error == "/d/mysqld.err"
    assert layout.user == "mysql"
    assert layout.log_bin == "/d/mnt/data/mysql-bin"
    assert layout.relay_log == "/d/mnt/data/relay-bin"
    assert layout.innodb_log_group_home_dir is None
    assert layout.innodb_undo_directory is None
    assert layout.innodb_data_home_dir is None


def test_defaults_follow_mariadb() -> None:
    # Observed on 10.11: with nothing set, names come from the host name; with only
    # pid-file set, binlog and error log names come from the pid file's stem.
    bare = layout_from_options("/etc/my.cnf", {"log-bin": "", "log-error": ""}, "db1.example")
    assert bare.datadir == "/var/lib/mysql"
    assert bare.port == 3306
    assert bare.socket == "/run/mysqld/mysqld.sock"
    assert bare.pid_file == "/var/lib/mysql/db1.pid"
    assert bare.log_bin == "/var/lib/mysql/db1-bin"
    assert bare.relay_log == "/var/lib/mysql/db1-relay-bin"
    assert bare.log_error == "/var/lib/mysql/db1.err"
    assert bare.user is None

    pid = layout_from_options("/etc/my.cnf",
                              {"pid-file": "/run/x/p.x.pid", "log-bin": "", "log-error": ""},
                              None)
    assert pid.log_bin == "/var/lib/mysql/p-bin"
    assert pid.log_error == "/run/x/p.err"

    off = layout_from_options("/etc/my.cnf", {"innodb-data-home-dir": "ibdata"}, "h")
    assert off.log_bin is None
    assert off.log_error is None
    assert off.default_log_error == "/var/lib/mysql/h.err"
    assert off.innodb_data_home_dir == "/var/lib/mysql/ibdata"


def test_log_basename_names_everything() -> None:
    layout = layout_from_options("/c", {"log-basename": "shard1", "log-bin": ""}, None)
    assert layout.pid_file == "/var/lib/mysql/shard1.pid"
    assert layout.log_bin == "/var/lib/mysql/shard1-bin"
    assert layout.relay_log == "/var/lib/mysql/shard1-relay-bin"


def test_read_layout_asks_my_print_defaults_on_the_host() -> None:
    executor = FakeExecutor({"my_print_defaults": (0, "--datadir=/srv/db\n--pid-file=x.pid\n", "")})
    layout = read_layout(executor, "/etc/mysql/my.cnf")
    assert executor.calls[0][:2] == ("my_print_defaults", "--defaults-file=/etc/mysql/my.cnf")
    assert "mysqld" in executor.calls[0] and "mariadbd" in executor.calls[0]
    assert layout.pid_file == "/srv/db/x.pid"
    assert len(executor.calls) == 1, "no host name needed when the pid file is named"


def test_read_layout_missing_file_is_a_clear_error() -> None:
    executor = FakeExecutor({"my_print_defaults": (
        1, "", "my_print_defaults: Could not open required defaults file: /nope.cnf")})
    with pytest.raises(HotcopyError, match=r"cannot read the server.s defaults file /nope\.cnf"):
        read_layout(executor, "/nope.cnf")


def _control(answers: dict[str, tuple[int, str, str]]) -> tuple[MysqldControl, FakeExecutor]:
    answers.setdefault("my_print_defaults", (0, "--datadir=/d\n--pid-file=/r/m.pid\n", ""))
    executor = FakeExecutor(answers)
    ctl = MysqldControl("db1", executor, "/d/my.cnf", None, ServerAddress("db1", "h", 1),
                        "/admin.cnf")
    return ctl, executor


@pytest.mark.parametrize(("ps_answer", "running"), [
    ((0, "Ssl mariadbd\n", ""), True),
    ((0, "S mysqld\n", ""), True),
    ((0, "Z mariadbd\n", ""), False),       # a zombie nobody reaped yet
    ((0, "S bash\n", ""), False),           # the pid was reused after a crash
    ((1, "", ""), False),                   # no such process
])
def test_is_running_trusts_no_stale_pid_file(ps_answer: tuple[int, str, str],
                                             running: bool) -> None:
    ctl, _ = _control({"cat": (0, "4242\n", ""), "ps": ps_answer})
    assert ctl.is_running() is running


def test_stop_when_not_running_does_nothing() -> None:
    ctl, executor = _control({"cat": (1, "", "No such file")})
    ctl.stop(timeout=1)
    assert not any(call[0] in {"kill", "systemctl"} for call in executor.calls)


def test_a_start_or_stop_is_looked_at_every_50_ms_for_15_s_then_less_often(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The spacing of these looks is added to the target's downtime: the old back-off
    # (0.1 s doubling to 1 s) saw a 1.6 s shutdown end only at 2.5 s.
    from hotcopy.mysql import mysqld

    clock = [100.0]
    monkeypatch.setattr(mysqld.time, "monotonic", lambda: clock[0])
    delays = mysqld.poll_delays()
    seen = []
    while clock[0] < 100.0 + mysqld.POLL_FAST_FOR_S + 10:
        delay = next(delays)
        seen.append((clock[0] - 100.0, delay))
        clock[0] += delay
    fast = [delay for at, delay in seen if at < mysqld.POLL_FAST_FOR_S]
    assert set(fast) == {mysqld.POLL_FAST_S} and len(fast) >= 299
    late = [delay for at, delay in seen if at >= mysqld.POLL_FAST_FOR_S + 2]
    assert late and set(late) == {mysqld.POLL_MAX_S}
