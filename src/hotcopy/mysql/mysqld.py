"""Starting and stopping one mysqld on its host, through that host's Executor.

The server's own defaults file is the single source of truth for where things live:
we ask ``my_print_defaults`` on the host to resolve it (includes, ``!includedir``,
later-wins) instead of parsing cnf files ourselves, so hotcopy sees exactly what the
server will see. Paths the file leaves unset are derived the way MariaDB derives them
(pid file from the host name, binlog and error log names from the pid file's stem).

Every wait here is bounded: a clone must never hang on a server that will not come up
or go down; it fails with the tail of the error log so the operator sees why.
"""

from __future__ import annotations

import logging
import posixpath
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from hotcopy import remote
from hotcopy.errors import CommandError, HotcopyError, MySQLError, RefusedError
from hotcopy.hosts.base import Executor
from hotcopy.mysql.connection import (
    ER_ACCESS_DENIED,
    ER_SERVER_GONE,
    ER_SERVER_LOST,
    ServerAddress,
    connect,
    error_code,
)

log = logging.getLogger(__name__)

#: Groups mariadbd reads from its defaults file (``client-server`` matters: Debian puts
#: the socket there).
SERVER_GROUPS = ("mysqld", "mariadbd", "server", "mariadb", "client-server")

#: Compiled-in defaults of Debian's MariaDB; used only when the defaults file is silent.
DEFAULT_DATADIR = "/var/lib/mysql"
DEFAULT_PORT = 3306
DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"

ERROR_LOG_LINES = 20
POLL_FAST_S = 0.05
"""How often a starting or stopping mysqld is looked at in its first seconds. Every
look's spacing is added to the target's downtime: the old back-off (0.1 s doubling to
1 s) noticed a shutdown of 1.6 s at 2.5 s."""
POLL_FAST_FOR_S = 15.0
POLL_MAX_S = 1.0


def poll_delays() -> Iterator[float]:
    """Waits between looks: every 50 ms for 15 s, then backing off to one a second (a
    long InnoDB recovery needs no one polling it 20 times a second)."""
    started = time.monotonic()
    delay = POLL_FAST_S
    while True:
        yield delay
        if time.monotonic() - started >= POLL_FAST_FOR_S:
            delay = min(delay * 2, POLL_MAX_S)


@dataclass(frozen=True)
class ServerLayout:
    """Where one server keeps its files, as its defaults file (and MariaDB's defaults) say.

    Relative paths are resolved against the datadir, as mariadbd does after it chdirs
    there. ``log_error`` is None when the server logs to stderr; ``log_bin`` is None when
    the binlog is off; the innodb directories are None when unset (they then default to
    the datadir).
    """

    defaults_file: str
    datadir: str
    port: int
    socket: str
    pid_file: str
    log_error: str | None
    user: str | None
    log_bin: str | None
    relay_log: str
    innodb_log_group_home_dir: str | None
    innodb_undo_directory: str | None
    innodb_data_home_dir: str | None
    options: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def default_log_error(self) -> str:
        """Where mariadbd writes when ``--log-error`` is given without a value."""
        return _replace_ext(self.pid_file, ".err")


def parse_print_defaults(output: str) -> dict[str, str]:
    """Fold ``my_print_defaults`` output into a dict, later options winning.

    Names are normalised (``_`` and ``-`` are the same option, ``loose-`` is only a
    "don't fail if unknown" marker); ``skip-X``/``disable-X`` remove X and are kept
    themselves (``skip-slave-start`` matters), until a later X turns X back on.
    A bare ``--flag`` maps to the empty string.
    """
    options: dict[str, str] = {}
    for raw in output.splitlines():
        line = raw.strip()
        if not line.startswith("--"):
            continue
        name, sep, value = line[2:].partition("=")
        name = name.replace("_", "-").lower()
        if name.startswith("loose-"):
            name = name[len("loose-"):]
        for prefix in ("skip-", "disable-"):
            if name.startswith(prefix) and not sep:
                options.pop(name[len(prefix):], None)
                break
        else:
            options.pop("skip-" + name, None)
            options.pop("disable-" + name, None)
        options[name] = value
    return options


def _replace_ext(path: str, ext: str) -> str:
    """MariaDB's fn_format(MY_REPLACE_EXT): the extension starts at the first dot."""
    directory, base = posixpath.split(path)
    stem = base.split(".", 1)[0]
    return posixpath.join(directory, stem + ext)


def _stem(path: str) -> str:
    return posixpath.basename(path).split(".", 1)[0]


def layout_from_options(
    defaults_file: str, options: dict[str, str], hostname: str | None,
) -> ServerLayout:
    """Build the layout; hostname is needed only when the pid file name is not set."""
    datadir = options.get("datadir") or DEFAULT_DATADIR
    datadir = datadir.rstrip("/") or "/"

    def in_datadir(value: str) -> str:
        return value if posixpath.isabs(value) else posixpath.join(datadir, value)

    def optional_dir(name: str) -> str | None:
        value = options.get(name)
        return in_datadir(value) if value else None

    basename = options.get("log-basename") or None
    pid_file = options.get("pid-file")
    if pid_file:
        pid_file = in_datadir(pid_file)
    else:
        short = basename or (hostname or "localhost").split(".", 1)[0]
        pid_file = posixpath.join(datadir, short + ".pid")
    # mariadbd names binlog/relay log/error log after --log-basename, else the pid file.
    stem = basename or _stem(pid_file)

    log_bin: str | None = None
    if "log-bin" in options:
        value = options["log-bin"]
        log_bin = in_datadir(value) if value else posixpath.join(datadir, stem + "-bin")
    relay = options.get("relay-log")
    relay_log = in_datadir(relay) if relay else posixpath.join(datadir, stem + "-relay-bin")

    log_error: str | None = None
    if "log-error" in options:
        value = options["log-error"]
        log_error = in_datadir(value) if value else _replace_ext(pid_file, ".err")

    try:
        port = int(options.get("port") or DEFAULT_PORT)
    except ValueError:
        raise HotcopyError(f"{defaults_file}: port = {options.get('port')!r} is not a number") \
            from None
    return ServerLayout(
        defaults_file=defaults_file,
        datadir=datadir,
        port=port,
        socket=options.get("socket") or DEFAULT_SOCKET,
        pid_file=pid_file,
        log_error=log_error,
        user=options.get("user") or None,
        log_bin=log_bin,
        relay_log=relay_log,
        innodb_log_group_home_dir=optional_dir("innodb-log-group-home-dir"),
        innodb_undo_directory=optional_dir("innodb-undo-directory"),
        innodb_data_home_dir=optional_dir("innodb-data-home-dir"),
        options=dict(options),
    )


def read_layout(executor: Executor, defaults_file: str) -> ServerLayout:
    """Ask the host's own ``my_print_defaults`` what the server will read."""
    result = executor.run(
        ["my_print_defaults", f"--defaults-file={defaults_file}", *SERVER_GROUPS],
        check=False, timeout=30)
    if not result.ok:
        detail = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        raise HotcopyError(
            f"on {executor.name}: cannot read the server's defaults file {defaults_file}: "
            f"{detail[0]}",
            hint="check servers.<name>.defaults_file in the config")
    options = parse_print_defaults(result.stdout)
    hostname = None
    if not options.get("pid-file") and not options.get("log-basename"):
        hostname = executor.run(["uname", "-n"], timeout=30).stdout.strip()
    return layout_from_options(defaults_file, options, hostname)


def parse_binary_version(output: str) -> str | None:
    """"mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for ..." -> "10.11.19-MariaDB-0+deb12u1"."""
    match = re.search(r"\bVer\s+(\d+\.\d+\.\d+\S*)", output)
    return match.group(1) if match else None


class MysqldControl:
    """Start, stop and observe one mysqld, either through systemd or directly.

    Without a service the server is started detached in its own session, so it
    outlives both this process and the ssh connection, with all three standard streams
    on /dev/null so no pipe of ours stays open (an executor would otherwise wait for
    EOF forever). Readiness is judged the only way that matters to a clone: an admin
    session succeeds. A pid counts only while it is a live, non-zombie mysqld, because
    pid files survive crashes and pids get reused.
    """

    def __init__(
        self,
        name: str,
        executor: Executor,
        defaults_file: str,
        service: str | None,
        address: ServerAddress,
        option_file: str | None,
        binary: str = "mariadbd",
    ) -> None:
        self.name = name
        self.executor = executor
        self.defaults_file = defaults_file
        self.service = service
        self.address = address
        self.option_file = option_file
        self.binary = binary
        self._layout: ServerLayout | None = None
        self._spawned_pid: int | None = None

    # -- observation ---------------------------------------------------------------

    @property
    def layout(self) -> ServerLayout:
        if self._layout is None:
            self._layout = read_layout(self.executor, self.defaults_file)
        return self._layout

    def refresh_layout(self) -> ServerLayout:
        """Re-read the defaults file, e.g. after a step changed it."""
        self._layout = None
        return self.layout

    @property
    def error_log(self) -> str:
        """The file mariadbd writes its errors to when started by us."""
        return self.layout.log_error or self.layout.default_log_error

    def pid(self) -> int | None:
        """The pid of the running server, or None; a stale pid file does not count."""
        candidates: list[int] = []
        from_file = self._read_pid_file()
        if from_file is not None:
            candidates.append(from_file)
        if self._spawned_pid is not None and self._spawned_pid not in candidates:
            candidates.append(self._spawned_pid)
        for pid in candidates:
            if self._alive(pid):
                return pid
        return None

    def is_running(self) -> bool:
        if self.pid() is not None:
            return True
        if self.service:
            return self.executor.run(["systemctl", "is-active", "--quiet", self.service],
                                     check=False, timeout=30).ok
        return False

    def binary_version(self) -> str | None:
        """The version of the server binary this host would start (``mariadbd --version``)."""
        result = self.executor.run([self.binary, "--version"], check=False, timeout=30)
        return parse_binary_version(result.stdout) if result.ok else None

    def answers_sql(self) -> bool:
        """Whether a server accepts the admin account at our address, pid file or not."""
        try:
            conn = connect(self.address, self.option_file, connect_timeout=3)
        except MySQLError as exc:
            return error_code(exc) == ER_ACCESS_DENIED  # someone answered, and refused us
        conn.close()
        return True

    def ensure_stopped_for_real(self) -> None:
        """Refuse when no mysqld is found by pid, yet one answers at the server's address.

        The pid file is only where *this* defaults file says; a server started with
        another (or a pid file removed) still owns the datadir, and swapping it under
        a live mysqld destroys both.
        """
        if self.answers_sql():
            raise RefusedError(
                f"{self.name}: no mysqld found through the pid file {self.layout.pid_file} "
                f"(defaults file {self.defaults_file}), yet {self.address.host}:"
                f"{self.address.port} answers SQL: a server that hotcopy cannot see would "
                "have its datadir replaced under it",
                hint="check pid-file in the defaults file (and servers.NAME.service); stop "
                     "that server yourself if it is the one to re-seed")

    def error_log_tail(self, lines: int = ERROR_LOG_LINES) -> str:
        path = self.error_log
        result = self.executor.run(["tail", "-n", str(lines), path], check=False, timeout=30)
        if not result.ok:
            return f"(cannot read the error log {path}: {result.stderr.strip()[-200:]})"
        return result.stdout.rstrip()

    # -- control -------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        """Start the server unless it runs, and return once an admin session works."""
        deadline = time.monotonic() + timeout
        if self.is_running():
            log.info("%s: mysqld already running; waiting until it accepts sessions", self.name)
            self._wait_ready(deadline, timeout)
            return
        if self.service:
            log.info("%s: systemctl start %s", self.name, self.service)
            self._systemctl("start", timeout)
        else:
            self._spawn()
        self._wait_ready(deadline, timeout)

    def stop(self, timeout: float = 120) -> None:
        """Stop the server cleanly; nothing to do if it is not running."""
        deadline = time.monotonic() + timeout
        pid = self.pid()
        if self.service:
            log.info("%s: systemctl stop %s", self.name, self.service)
            self._systemctl("stop", timeout)
        elif pid is None:
            log.info("%s: mysqld is not running", self.name)
            return
        elif not self._shutdown_via_sql():
            log.info("%s: sending SIGTERM to mysqld (pid %d)", self.name, pid)
            self.signal(pid, "TERM")
        if pid is not None:
            self._wait_gone(pid, deadline, timeout)
        self._spawned_pid = None

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the server: a last resort (InnoDB recovers at the next start)."""
        pid = self.pid()
        if pid is None:
            return
        log.warning("%s: killing mysqld (pid %d)", self.name, pid)
        self.signal(pid, "KILL")
        self._wait_gone(pid, time.monotonic() + timeout, timeout)
        self._spawned_pid = None

    def signal(self, pid: int, name: str) -> None:
        self.executor.run(["kill", f"-{name}", str(pid)], check=False, timeout=30)

    # -- internals -----------------------------------------------------------------

    def _read_pid_file(self) -> int | None:
        result = self.executor.run(["cat", self.layout.pid_file], check=False, timeout=30)
        if not result.ok:
            return None
        text = result.stdout.strip()
        return int(text) if text.isdigit() else None

    def _alive(self, pid: int) -> bool:
        """The pid exists, is not a zombie, and is a mysqld (pid files outlive crashes)."""
        result = self.executor.run(["ps", "-o", "stat=,comm=", "-p", str(pid)],
                                   check=False, timeout=30)
        if not result.ok:
            return False
        fields = result.stdout.split()
        if len(fields) < 2 or fields[0].startswith("Z"):
            return False
        comm = fields[1]
        known = {"mariadbd", "mysqld", posixpath.basename(self.binary)[:15]}
        if pid == self._spawned_pid:
            # Between fork and exec the child we spawned still shows as the shell or
            # setsid; on a loaded host that window is long enough to be seen.
            known |= {"sh", "dash", "bash", "setsid"}
        return comm in known

    def _spawn(self) -> None:
        # `setsid CMD &` rather than `setsid -f`: in a non-interactive shell the
        # background child is not a process-group leader, so setsid execs in place and
        # $! is mariadbd's own pid, which lets us notice an early exit before it has
        # written its pid file.
        argv = [self.binary, f"--defaults-file={self.defaults_file}"]
        if self.layout.log_error is None:
            # Otherwise its errors would go to the /dev/null we give it as stderr.
            argv.append(f"--log-error={self.error_log}")
        self._ensure_runtime_dirs()
        log.info("%s: starting %s", self.name, shlex.join(argv))
        result = self.executor.run(remote.argv("spawn.sh", *argv), timeout=30)
        text = result.stdout.strip()
        self._spawned_pid = int(text) if text.isdigit() else None

    def _ensure_runtime_dirs(self) -> None:
        """Recreate the socket and pid directories (tmpfs /run loses them at reboot).

        Under systemd the unit's RuntimeDirectory does this; started by hand, mariadbd
        would fail on a missing /run/mysqld.
        """
        layout = self.layout
        for directory in sorted({posixpath.dirname(layout.pid_file),
                                 posixpath.dirname(layout.socket)}):
            if not directory or self.executor.exists(directory):
                continue
            argv = ["install", "-d", "-m", "0755"]
            if layout.user:
                argv += ["-o", layout.user]
            log.info("%s: creating %s", self.name, directory)
            self.executor.run([*argv, directory], timeout=30)

    def _systemctl(self, verb: str, timeout: float) -> None:
        assert self.service is not None
        try:
            self.executor.run(["systemctl", verb, self.service], timeout=max(timeout, 1))
        except CommandError as exc:
            raise HotcopyError(
                f"{self.name}: `systemctl {verb} {self.service}` failed: {exc}\n"
                f"last lines of {self.error_log}:\n{self.error_log_tail()}") from exc

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        delays = poll_delays()
        last_error = "no attempt made"
        while True:
            remaining = deadline - time.monotonic()
            try:
                conn = connect(self.address, self.option_file,
                               connect_timeout=max(1.0, min(5.0, remaining)))
            except MySQLError as exc:
                if error_code(exc) == ER_ACCESS_DENIED:
                    raise MySQLError(
                        f"{self.name}: mysqld is up but refuses the admin account "
                        f"of {self.option_file or 'the unix socket login'}", hint=exc.hint) from exc
                last_error = exc.message
            else:
                conn.close()
                log.info("%s: mysqld is ready", self.name)
                return
            if self.pid() is None and (self.service is None or not self.is_running()):
                raise HotcopyError(
                    f"{self.name}: mysqld exited while starting; last lines of "
                    f"{self.error_log}:\n{self.error_log_tail()}",
                    hint=f"fix the cause above, then start it with {self.defaults_file}")
            if time.monotonic() >= deadline:
                pid = self.pid()
                raise HotcopyError(
                    f"{self.name}: mysqld (pid {pid}) did not accept a session within "
                    f"{timeout:.0f}s ({last_error}); it was left running. Last lines of "
                    f"{self.error_log}:\n{self.error_log_tail()}",
                    hint="crash recovery of a large datadir can take long: raise the start "
                         "timeout, or stop the server")
            time.sleep(min(next(delays), max(0.0, deadline - time.monotonic())))

    def _shutdown_via_sql(self) -> bool:
        """SHUTDOWN over the admin session; False when the server cannot be reached."""
        try:
            conn = connect(self.address, self.option_file, connect_timeout=3)
        except MySQLError as exc:
            log.info("%s: no admin session for SHUTDOWN (%s)", self.name, exc.message)
            return False
        try:
            log.info("%s: SHUTDOWN", self.name)
            conn.execute("SHUTDOWN")
        except MySQLError as exc:
            if error_code(exc) not in (ER_SERVER_GONE, ER_SERVER_LOST):
                log.info("%s: SHUTDOWN refused (%s)", self.name, exc.message)
                return False
        finally:
            conn.close()
        return True

    def _wait_gone(self, pid: int, deadline: float, timeout: float) -> None:
        delays = poll_delays()
        while self._alive(pid):
            if time.monotonic() >= deadline:
                raise HotcopyError(
                    f"{self.name}: mysqld (pid {pid}) still running {timeout:.0f}s after "
                    f"it was asked to stop; last lines of {self.error_log}:\n"
                    f"{self.error_log_tail()}",
                    hint="a long shutdown (large buffer pool, purge) may just need time; "
                         "look at the error log before killing it")
            time.sleep(min(next(delays), max(0.0, deadline - time.monotonic())))
        log.info("%s: mysqld (pid %d) has stopped", self.name, pid)
