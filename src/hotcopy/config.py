"""The TOML configuration, validated into typed objects with errors that name the key.

A DBA's first contact with hotcopy is often a typo in a config file; the error must say
which key, in which file, and what was expected, and nothing may have been changed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    path: str | None = None


class CloneConfig(_Strict):
    """How gently and how carefully a clone runs; the defaults suit most fleets."""

    max_source_lag_s: int = Field(default=60, ge=0)
    lock_wait_timeout_s: int = Field(default=2, ge=1, le=60)
    lock_attempts: int = Field(default=3, ge=1, le=20)
    lock_retry_delay_s: float = Field(default=1.0, ge=0)
    preflush_dirty_pages: bool = True
    preflush_timeout_s: float = Field(default=10, ge=0)
    catchup_timeout_s: float = Field(default=600, gt=0)
    verify: Literal["checksum", "catchup"] = "checksum"
    keep_old_datadir: bool = False
    free_space_margin: float = Field(default=0.10, ge=0, le=5)
    start_timeout_s: float = Field(default=300, gt=0)


class TransferConfig(_Strict):
    method: Literal["auto", "rsyncd", "rsync_ssh", "stream", "zfs_send"] = "auto"
    port_range: tuple[int, int] = (28700, 28799)
    state_dir: str = Field(default="/run/hotcopy", pattern=r"^/[A-Za-z0-9_./-]+$",
                           description="root-only directory on each host for per-job secrets")
    bwlimit_kbps: int | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=24 * 3600, gt=0)
    retries: int = Field(default=3, ge=0, le=20)

    @field_validator("port_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1024 <= low <= high <= 65535:
            raise ValueError("must be [low, high] with 1024 <= low <= high <= 65535")
        return value


class SshConfig(_Strict):
    known_hosts: str | None = None
    identity_file: str | None = None
    connect_timeout_s: int = Field(default=10, gt=0)


class ServerConfig(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(default=3306, ge=1, le=65535)
    ssh: str = "local"
    datadir: str
    defaults_file: str
    service: str | None = None
    mysqld: str = "mariadbd"
    snapshot: Literal["auto", "btrfs", "zfs", "lvm"] = "auto"

    @field_validator("datadir", "defaults_file")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value.rstrip("/") or "/"

    @field_validator("host")
    @classmethod
    def _no_scheme(cls, value: str) -> str:
        if "/" in value or " " in value:
            raise ValueError("must be a host name or an IP address")
        return value


class Config(_Strict):
    shard: ShardConfig
    mysql: MysqlConfig
    replication: ReplicationConfig = ReplicationConfig()
    journal: JournalConfig = JournalConfig()
    clone: CloneConfig = CloneConfig()
    transfer: TransferConfig = TransferConfig()
    ssh: SshConfig = SshConfig()
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
            raise RefusedError(f"unknown server '{name}'",
                               hint=f"servers in {self.source_path}: {known}") from None

    def journal_path(self) -> str:
        if self.journal.path:
            return self.journal.path
        return os.path.join(DEFAULT_STATE_DIR, "journal.sqlite")


def _format_location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; every problem becomes a ConfigError naming the key."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist",
                          hint="`hotcopy sandbox up --dir DIR` writes a ready example") from None
    except PermissionError:
        raise ConfigError(f"config file {file} is not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None
    raw["source_path"] = str(file)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _format_location(tuple(err["loc"])) or "(top level)"
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown key (typo?)"
            elif err["type"] == "missing":
                message = "required key is missing"
            lines.append(f"  {key}: {message}")
        raise ConfigError(f"{file} is invalid:\n" + "\n".join(lines)) from None
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
            raise ConfigError(f"{key}: {name} does not exist",
                              hint="it must hold a [client] group with user= and password=",
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
