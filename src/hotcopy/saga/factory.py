"""Which journal a config asks for, opened and checked; beside the backends, not in the base.

Opening is where an unreachable or misconfigured etcd is found: before any job exists,
so the refusal (exit 2) truly means nothing was changed.
"""

from __future__ import annotations

import configparser
import logging
import os
import stat

from hotcopy.config import Config, JournalConfig
from hotcopy.errors import RefusedError
from hotcopy.saga.etcd_client import EtcdAuthError, EtcdClient, EtcdError, TlsSettings, b64
from hotcopy.saga.etcd_journal import EtcdJournal
from hotcopy.saga.journal import Journal
from hotcopy.saga.sqlite_journal import SqliteJournal

log = logging.getLogger(__name__)

_AUTH_KEYS = frozenset({"user", "password"})


def read_auth_file(path: str) -> tuple[str, str]:
    """``[etcd] user=... password=...``; private to its owner, nothing else in it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise RefusedError(f"cannot read the etcd auth file {path}: {exc.strerror}",
                           hint="[journal] auth_file names a file with [etcd] user= and "
                           "password=") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RefusedError(f"the etcd auth file {path} is readable by others "
                           f"(mode {stat.S_IMODE(mode):o})", hint=f"chmod 600 {path}")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise RefusedError(f"the etcd auth file {path} is not an INI file: "
                           f"{type(exc).__name__}") from exc
    if not parser.has_section("etcd"):
        raise RefusedError(f"the etcd auth file {path} has no [etcd] section")
    extra = set(parser["etcd"]) - _AUTH_KEYS
    if extra:
        raise RefusedError(f"the etcd auth file {path} has keys hotcopy does not take: "
                           f"{', '.join(sorted(extra))}", hint="only user= and password=")
    user, password = parser["etcd"].get("user"), parser["etcd"].get("password")
    if not user or password is None:
        raise RefusedError(f"the etcd auth file {path} needs both user= and password=")
    return user, password


def etcd_client(conf: JournalConfig) -> EtcdClient:
    user = password = None
    if conf.auth_file:
        user, password = read_auth_file(conf.auth_file)
    tls = TlsSettings(conf.tls_ca_file, conf.tls_cert_file, conf.tls_key_file)
    try:
        return EtcdClient(conf.endpoints, timeout_s=conf.timeout_s, rounds=conf.retry_rounds,
                          tls=tls, user=user, password=password)
    except (OSError, ValueError) as exc:
        raise RefusedError(f"cannot set up TLS for etcd: {exc}",
                           hint="check [journal] tls_ca_file, tls_cert_file, tls_key_file") \
            from exc


def refuse_unfinished_sqlite_jobs(config: Config) -> None:
    """Moving to etcd with jobs unfinished in SQLite would orphan them: their undo
    entries (and locks) would be invisible to every etcd controller."""
    path = config.journal_path()
    if not os.path.exists(path):
        return
    journal = SqliteJournal(path)
    try:
        unfinished = [job for job in journal.list_jobs(limit=10_000) if not job.terminal]
    finally:
        journal.close()
    if unfinished:
        names = ", ".join(f"{job.id} ({job.state})" for job in unfinished[:10])
        raise RefusedError(
            f"[journal] backend is etcd, but the SQLite journal {path} still has "
            f"{len(unfinished)} unfinished job(s): {names}; nothing was changed",
            hint="finish them on the SQLite journal first (set backend = \"sqlite\", then "
            "`hotcopy rollback JOB` or `hotcopy resume JOB`), then switch; or move the "
            "file away once you know they owe nothing")


def open_journal(config: Config) -> Journal:
    conf = config.journal
    if conf.backend == "sqlite":
        return SqliteJournal(config.journal_path())
    refuse_unfinished_sqlite_jobs(config)
    client = etcd_client(conf)
    try:
        client.call("/v3/kv/range", {"key": b64(conf.prefix), "count_only": True})
    except EtcdAuthError as exc:
        raise RefusedError(f"etcd refused hotcopy: {exc}; nothing was changed",
                           hint="check [journal] auth_file and the tls_* files") from exc
    except EtcdError as exc:
        raise RefusedError(f"the etcd journal is unreachable: {exc}; nothing was changed",
                           hint="check [journal] endpoints, that etcd runs and has quorum")\
            from exc
    return EtcdJournal(client, config.shard.name, prefix=conf.prefix,
                       lease_ttl_s=conf.lease_ttl_s)
