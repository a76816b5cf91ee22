"""The TOML configuration, validated into typed objects with errors that name the key.

A DBA's first contact with hotcopy is often a typo in a config file; the error must say
which key, in which file, and what was expected, and nothing may have been changed.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from hotcopy.errors import ConfigError, RefusedError

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/hotcopy"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShardConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")


class MysqlConfig(_Strict):
    option_file: str = Field(description="[client] user=... password=... of the admin account")
    connect_timeout_s: float = Field(default=5, gt=0)


class ReplicationConfig(_Strict):
    option_file: str | None = None


class JournalConfig(_Strict):
    backend: Literal["sqlite", "etcd"] = "sqlite"
    path: str | None = None
    """sqlite: the journal file (default: in the state directory)."""
    endpoints: tuple[str, ...] = Field(default=("http://127.0.0.1:2379",),
                                       description="etcd client URLs, tried in turn")
    prefix: str = Field(default="/hotcopy", pattern=r"^/[A-Za-z0-9_./-]*$",
                        description="one tree per fleet; the shard name is in every key")
    lease_ttl_s: int = Field(default=10, ge=2, le=300,
                             description="a dead controller's jobs can be taken over after this")
    timeout_s: float = Field(default=5, gt=0, le=60, description="per etcd request")
    retry_rounds: int = Field(default=3, ge=1, le=20,
                              description="passes over all endpoints before giving up")
    auth_file: str | None = Field(default=None, description="[etcd] user=... password=...")
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one endpoint")
        for url in value:
            if not url.startswith(("http://", "https://")) or "@" in url:
                raise ValueError(f"'{url}' must be http(s)://host:port, without credentials")
        return value


class CloneConfig(_Strict):
    """How gently and how carefully a clone runs; the defaults suit most fleets."""

    max_source_lag_s: int = Field(default=60, ge=0)
    lock_wait_timeout_s: int = Field(default=2, ge=1, le=60)
    lock_attempts: int = Field(default=3, ge=1, le=20)
    lock_retry_delay_s: float = Field(default=1.0, ge=0)
    preflush_dirty_pages: bool = True
    preflush_timeout_s: float = Field(default=3, ge=0)
    preflush_min_checkpoint_age_mb: float = Field(default=8, ge=0)
    catchup_timeout_s: float = Field(default=600, gt=0)
    fast_catchup: bool = True
    verify: Literal["checksum", "catchup"] = "checksum"
    verify_timeout_s: float = Field(default=1800, gt=0,
                                    description="bound of the checksum phase of verify")
    keep_old_datadir: bool = False
    delta: Literal["off", "auto", "on"] = "off"
    free_space_margin: float = Field(default=0.10, ge=0, le=5)
    start_timeout_s: float = Field(default=300, gt=0)
    # Warm target (issue 13): the source's buffer pool list travels with the snapshot.
    warm_target: bool = True
    buffer_pool_dump_timeout_s: float = Field(default=10, ge=0, le=600)
    buffer_pool_dump_pct: int = Field(default=100, ge=1, le=100,
                                      description="of the source's buffer pool pages")
    buffer_pool_load_wait_s: float = Field(default=10, ge=0, le=3600)


class TransferConfig(_Strict):
    method: Literal["auto", "rsyncd", "rsync_ssh", "stream", "zfs_send"] = "auto"
    port_range: tuple[int, int] = (28700, 28799)
    state_dir: str = Field(default="/run/hotcopy", pattern=r"^/[A-Za-z0-9_./-]+$",
                           description="root-only directory on each host for per-job secrets")
    bwlimit_kbps: int | None = Field(default=None, gt=0,
                                     description="KiB/s for the whole transfer, all streams")
    timeout_s: float = Field(default=24 * 3600, gt=0)
    retries: int = Field(default=3, ge=0, le=20)
    parallel: int = Field(default=1, ge=1, le=8,
                          description="streams at once, files split into groups by size")
    connect_timeout_s: int = Field(default=20, ge=1, le=600)
    io_timeout_s: int = Field(default=300, ge=10, le=86400,
                              description="a stream silent this long is broken")
    writeback_interval_s: float = Field(default=1.0, ge=0, le=3600)
    # Off by default: measured here (2 cores), zstd -3 moves 215 MB/s and -1 500 MB/s
    # against 1 GB/s uncompressed, and it takes the source's CPU from its queries. It
    # pays only on a link slower than that (a WAN, 1 GbE with compressible data).
    zstd_level: int = Field(default=0, ge=0, le=19,
                            description="stream: zstd level; 0 sends uncompressed (the "
                                        "default: compress only for a slow link)")
    max_source_latency_factor: float | None = Field(
        default=None, gt=1, le=100,
        description="pace the copy so the source's probe latency stays within this factor "
                    "of its baseline (stream method)")
    throttle_floor_kbps: int = Field(default=1024, gt=0,
                                     description="the paced copy never goes slower (KiB/s)")
    latency_probe_table: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_$]{1,64}\.[A-Za-z0-9_$]{1,64}$",
        description="schema.table with an integer primary key: the throttle's probe reads "
                    "it at random keys, as the source's clients do")
    # rsync_ssh: the target logs into the source with these; the paths are on the target.
    ssh_user: str = Field(default="root", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    ssh_identity_file: str | None = Field(default=None, pattern=r"^/[^\s'\"\\]+$")
    ssh_known_hosts: str | None = Field(default=None, pattern=r"^/[^\s'\"\\]+$")
    ssh_options: tuple[str, ...] = Field(default=(), description="extra `ssh -o` options")

    @field_validator("port_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1024 <= low <= high <= 65535:
            raise ValueError("must be [low, high] with 1024 <= low <= high <= 65535")
        return value

    @field_validator("ssh_options")
    @classmethod
    def _plain_options(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for option in value:
            if not option or any(c in option for c in " \t\n'\"\\"):
                raise ValueError(f"'{option}' must be one Key=Value without spaces or quotes")
        return value


HOOK_NAMES = ("pre_clone", "before_stop_target", "after_commit", "on_rollback",
              "pre_switchover", "post_switchover", "pre_failover", "post_failover")

_Argv = tuple[str, ...]


class HooksConfig(_Strict):
    """Commands (argv lists, no shell) run on the controller at fixed points of a job."""

    pre_clone: _Argv = ()
    before_stop_target: _Argv = ()
    after_commit: _Argv = ()
    on_rollback: _Argv = ()
    pre_switchover: _Argv = ()
    post_switchover: _Argv = ()
    pre_failover: _Argv = ()
    post_failover: _Argv = ()
    hook_timeout_s: float = Field(default=30, gt=0, le=3600)

    @field_validator(*HOOK_NAMES)
    @classmethod
    def _argv(cls, value: _Argv) -> _Argv:
        if value and not value[0]:
            raise ValueError("the first element must name the program to run")
        return value


class PromotionConfig(_Strict):
    """Switchover and failover bounds: every wait ends, and says why."""

    max_lag_s: int = Field(default=10, ge=0,
                           description="a switchover candidate may be this far behind")
    drain_timeout_s: float = Field(default=10, gt=0,
                                   description="wait for open write transactions to end")
    gtid_wait_timeout_s: float = Field(default=60, gt=0,
                                       description="wait for a replica to reach a position")
    relay_apply_timeout_s: float = Field(default=120, gt=0,
                                         description="failover: wait for relay logs applied")


class SshConfig(_Strict):
    known_hosts: str | None = None
    identity_file: str | None = None
    connect_timeout_s: int = Field(default=10, gt=0)


class ServerConfig(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(default=3306, ge=1, le=65535)
    ssh: str = "local"
    sudo: bool = False
    datadir: str
    defaults_file: str
    service: str | None = None
    mysqld: str = "mariadbd"
    snapshot: Literal["auto", "btrfs", "zfs", "lvm"] = "auto"
    lvm_snapshot_percent: float = Field(default=20, gt=0, le=100,
                                        description="LVM snapshot size, % of the origin")
    lvm_snapshot_max_gib: float = Field(default=100, gt=0, description="LVM snapshot size cap")
    lvm_snapshot_abort_percent: float = Field(
        default=90, gt=0, lt=100, description="stop the transfer before the snapshot overflows")

    @field_validator("datadir", "defaults_file")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _sudo_needs_ssh(self) -> ServerConfig:
        if self.sudo and self.ssh == "local":
            raise ValueError("sudo = true needs an ssh destination: for ssh = \"local\" run "
                             "hotcopy itself as root")
        return self

    @field_validator("host")
    @classmethod
    def _no_scheme(cls, value: str) -> str:
        if "/" in value or " " in value:
            raise ValueError("must be a host name or an IP address")
        return value


class AgentConfig(_Strict):
    """`hotcopy agent run`: how often it looks, and the rails on what it may do."""

    interval_s: float = Field(default=10, gt=0, description="seconds between polls")
    grace_s: float = Field(default=60, ge=0,
                           description="an SQL thread stopped on an error this long is broken")
    flap_window_s: float = Field(default=3600, ge=0,
                                 description="no second automated re-seed of a replica within")
    max_reseeds_per_day: int = Field(default=4, ge=0)
    lag_threshold_s: int = Field(default=60, ge=0, description="reported as lagging beyond")
    audit_interval_s: float = Field(default=300, ge=0,
                                    description="how often a donor's crash-safety is audited")
    lease_ttl_s: float = Field(default=15, gt=0, description="leader lease")
    observe_only: bool = Field(default=False, description="decide and report, change nothing")
    metrics_address: str = "127.0.0.1"
    metrics_port: int = Field(default=9470, ge=0, le=65535, description="0: no endpoint")
    store_path: str | None = Field(default=None,
                                   description="SQLite agent store; default beside the journal")
    auto_failover: bool = Field(default=False,
                                description="fail a dead master over on its own (else only "
                                            "report it)")
    failover_after_s: float = Field(default=30, ge=0,
                                    description="the master seen down in every poll this long "
                                                "before an automatic failover")
    max_failovers_per_day: int = Field(default=2, ge=0,
                                       description="automatic failovers per 24 h (flap_window_s "
                                                   "also holds between two on the shard)")


class Config(_Strict):
    shard: ShardConfig
    mysql: MysqlConfig
    replication: ReplicationConfig = ReplicationConfig()
    journal: JournalConfig = JournalConfig()
    clone: CloneConfig = CloneConfig()
    transfer: TransferConfig = TransferConfig()
    ssh: SshConfig = SshConfig()
    hooks: HooksConfig = HooksConfig()
    promotion: PromotionConfig = PromotionConfig()
    agent: AgentConfig = AgentConfig()
    servers: dict[str, ServerConfig] = Field(min_length=1)
    source_path: str = ""

    @model_validator(mode="after")
    def _distinct_addresses(self) -> Config:
        seen: dict[tuple[str, int], str] = {}
        for name, server in self.servers.items():
            key = (server.host, server.port)
            if key in seen:
                raise ValueError(f"servers.{seen[key]} and servers.{name} have the same "
                                 f"address {server.host}:{server.port}")
            seen[key] = name
        return self

    def server(self, name: str) -> ServerConfig:
        try:
            return self.servers[name]
        except KeyError:
            known = ", ".join(sorted(self.servers))
            raise RefusedError(f"unknown server '{name}': {self.source_path} has no "
                               f"servers.{name} section",
                               hint=f"the servers it defines: {known}") from None

    def journal_path(self) -> str:
        if self.journal.path:
            return self.journal.path
        return os.path.join(DEFAULT_STATE_DIR, "journal.sqlite")

    def agent_store_path(self) -> str:
        if self.agent.store_path:
            return self.agent.store_path
        return os.path.join(os.path.dirname(self.journal_path()), "agent.sqlite")


def _format_location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys a table at ``loc`` may hold, found by walking the models' annotations."""
    model: Any = Config
    for part in loc:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                return []
            model = field.annotation
        elif get_origin(model) is dict:
            model = get_args(model)[1]
        else:
            return []
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [key for key in model.model_fields if key != "source_path"]
    return []


def _unknown_key_message(loc: tuple[int | str, ...]) -> str:
    """A typo is the usual cause, so name the key that was probably meant."""
    known = _keys_at(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"unknown key (typo? did you mean '{close[0]}'?)"
    if known:
        return f"unknown key (typo?); keys allowed here: {', '.join(known)}"
    return "unknown key (typo?)"


def _shown_input(value: Any) -> str:
    """The offending value, when it is a short scalar that can safely be echoed back."""
    if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 60):
        return f" (got {value!r})"
    return ""


def _describe(err: ErrorDetails) -> str:
    if err["type"] == "extra_forbidden":
        return _unknown_key_message(tuple(err["loc"]))
    if err["type"] == "missing":
        return "required key is missing"
    return f"{err['msg']}{_shown_input(err.get('input'))}"


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; every problem becomes a ConfigError naming the key."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist",
                          hint="check --config (or HOTCOPY_CONFIG); `hotcopy sandbox up --dir "
                               "DIR` writes a ready example") from None
    except PermissionError:
        raise ConfigError(f"config file {file} is not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None
    raw["source_path"] = str(file)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {_format_location(tuple(err['loc'])) or '(top level)'}: {_describe(err)}"
                 for err in exc.errors()]
        raise ConfigError(f"{file} is invalid:\n" + "\n".join(lines),
                          hint="fix the keys named above; nothing was changed") from None
    _check_option_files(config)
    return config


def _check_option_files(config: Config) -> None:
    """Option files hold passwords: they must exist, and we warn when others can read them."""
    files = [("mysql.option_file", config.mysql.option_file)]
    if config.replication.option_file:
        files.append(("replication.option_file", config.replication.option_file))
    for key, name in files:
        try:
            mode = os.stat(name).st_mode
        except FileNotFoundError:
            raise ConfigError(f"{key} in {config.source_path}: {name} does not exist",
                              hint="point it at an option file (mode 0600) whose client group "
                                   "sets user= and password=, as for the mariadb client",
                              ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: %s holds a password and is readable by group/others "
                        "(chmod 600 %s)", key, name, name)


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
