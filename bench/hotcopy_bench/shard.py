"""The benchmark's own shard: a sandbox (master, replica1, replica2) loaded with sysbench.

Every client tool here (sysbench, mariabackup) logs in as root over the server's unix
socket: the sandbox installs root@localhost with unix_socket authentication, so the
server checks the OS user of the peer and no password exists to leak into argv. The
harness's own sessions use the sandbox's admin option file over TCP, as hotcopy does.

Datasets grow in steps: the tables for the first size are loaded, that size is
measured, then tables are added in another schema up to the next size, and so on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hotcopy import config as config_module
from hotcopy import sandbox
from hotcopy.mysql import replication
from hotcopy.mysql.flavor.base import get_global, set_global
from hotcopy.mysql.server import Server
from hotcopy.runtime import Runtime
from hotcopy.sandbox.layout import server_paths
from hotcopy.transfer.base import STATIC_EXCLUDES, is_excluded, log_excludes

log = logging.getLogger(__name__)

SOURCE, TARGET = "replica1", "replica2"
#: InnoDB file bytes per sysbench row (id, k, c CHAR(120), pad CHAR(60)), measured on
#: MariaDB 10.11 without the secondary index on k (--create_secondary=off: building it
#: on the master and then on every replica made loading 25% slower and it changes
#: nothing a clone does): 500,000 rows make a 121.6 MB .ibd.
BYTES_PER_ROW = 243.3
ROWS_PER_TABLE = 1_000_000
#: Settings relaxed while loading (the load is not what is measured), restored after.
LOAD_SETTINGS = {"innodb_flush_log_at_trx_commit": 2, "sync_binlog": 0}
PREPARE_TIMEOUT_S = 3 * 3600


#: The first table Shard.load creates (schema bench1, sysbench's sbtest1).
PROBE_TABLE = "bench1.sbtest1"


@dataclass
class Table:
    schema: str
    name: str
    rows: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Dataset:
    """The sysbench tables loaded so far, by schema; the write load uses the first."""

    tables: list[Table] = field(default_factory=list)
    loaded_bytes: int = 0

    def schema_tables(self, schema: str) -> list[Table]:
        return [t for t in self.tables if t.schema == schema]


def plan_step(extra_bytes: int) -> tuple[int, int]:
    """(tables, rows per table) that add about ``extra_bytes`` of sysbench data."""
    rows = max(1000, round(extra_bytes / BYTES_PER_ROW))
    tables = max(1, math.ceil(rows / ROWS_PER_TABLE))
    return tables, max(1000, round(rows / tables))


def image_size_for(largest: int) -> int:
    """Each server's (sparse) image: 3x the data (datadir + staging + old datadir on the
    target, binlogs while loading) plus room for redo, undo and relay logs."""
    return max(4 * 1024**3, 3 * largest + 3 * 1024**3)


def space_needed(largest: int) -> int:
    """What the run may really write, sparse images or not: the master's data and
    binlogs, the source's copy, and on the target at the peak of a clone its old datadir,
    the staging copy and a mariabackup or raw-copy directory (about 5x the data), plus
    redo, undo and relay logs."""
    return 5 * largest + 3 * 1024**3


def refuse_without_space(largest: int, directory: Path) -> None:
    """Before anything is made: an 8 GB run that fills the disk half-way would leave a
    machine with full filesystems and no figures."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    needed = space_needed(largest)
    if free < needed:
        raise SystemExit(f"not enough disk space for {largest / 1024**3:.1f} GiB of data: "
                         f"the run needs about {needed / 1024**3:.0f} GiB free under "
                         f"{existing}, and {free / 1024**3:.0f} GiB are (give --workdir "
                         "another filesystem, or smaller --sizes)")


class Shard:
    def __init__(self, directory: Path, logs: Path) -> None:
        self.directory = directory
        self.logs = logs
        self.info: sandbox.SandboxInfo | None = None
        self.dataset = Dataset()
        self.runtime: Runtime | None = None

    # -- lifecycle -----------------------------------------------------------------

    def up(self, image_size: int) -> None:
        log.info("sandbox up in %s (images %.1f GiB each, sparse)", self.directory,
                 image_size / 1024**3)
        self.info = sandbox.up(self.directory, replicas=2, image_size=image_size)
        self.runtime = Runtime(config_module.load(self.info.config_path))

    def down(self) -> None:
        if self.runtime is not None:
            self.runtime.close()
        sandbox.down(self.directory)

    @property
    def rt(self) -> Runtime:
        assert self.runtime is not None, "shard is not up"
        return self.runtime

    @property
    def sandbox_info(self) -> sandbox.SandboxInfo:
        assert self.info is not None, "shard is not up"
        return self.info

    def server(self, name: str) -> Server:
        return self.rt.server(name)

    def socket(self, name: str) -> Path:
        return server_paths(self.sandbox_info.directory, name).socket

    def defaults_file(self, name: str) -> Path:
        return self.sandbox_info.defaults_file(name)

    def datadir(self, name: str) -> Path:
        return self.sandbox_info.datadir(name)

    def write_config(self, path: Path, *, preflush: bool,
                     etcd_endpoints: list[str] | None = None,
                     latency_factor: float | None = None, delta: bool = False,
                     verify: str = "catchup") -> Path:
        """The sandbox's hotcopy.toml plus the bench's [clone] settings.

        verify = "catchup" (unless ``verify`` says otherwise): the end-to-end time is
        measured to a caught-up target, as for mariabackup; a checksum verify would add a
        second source pause that no alternative pays (the pipeline hotcopy_verified
        measures what it costs). With ``etcd_endpoints`` the journal is etcd instead of the
        sandbox's SQLite file (the sandbox's own state is unaffected). With
        ``latency_factor`` the copy is paced by the latency throttle; with ``delta`` the
        clone re-seeds from a snapshot of the target's own datadir.
        """
        text = self.sandbox_info.config_path.read_text()
        if etcd_endpoints:
            text = with_etcd_journal(text, etcd_endpoints)
        text += (f"\n[clone]\nverify = \"{verify}\"\n"
                 f"preflush_dirty_pages = {'true' if preflush else 'false'}\n"
                 + ('delta = "on"\n' if delta else ""))
        if latency_factor is not None:
            # The probe reads the first table the bench loads at random keys, as the
            # bench's own readers do: it waits for the disk as they do.
            text += (f"\n[transfer]\nmax_source_latency_factor = {latency_factor}\n"
                     f'latency_probe_table = "{PROBE_TABLE}"\n')
        path.write_text(text)
        path.chmod(0o600)
        return path

    # -- data ----------------------------------------------------------------------

    def sysbench_base(self, server: str) -> list[str]:
        return ["sysbench", "--db-driver=mysql", f"--mysql-socket={self.socket(server)}",
                "--mysql-user=root"]

    def load(self, size: int) -> None:
        """Grow the dataset to about ``size`` bytes of sysbench tables, via replication."""
        extra = size - self.dataset.loaded_bytes
        if extra <= 0:
            return
        schema = f"bench{len({t.schema for t in self.dataset.tables}) + 1}"
        tables, rows = plan_step(extra)
        log.info("loading %d table(s) x %d rows into %s on the master (~%.2f GiB)", tables,
                 rows, schema, tables * rows * BYTES_PER_ROW / 1024**3)
        started = time.monotonic()
        master = self.server("master")
        master.execute((f"CREATE DATABASE IF NOT EXISTS {schema}", ()))
        saved = self._relax_durability()
        try:
            cmd = [*self.sysbench_base("master"), f"--mysql-db={schema}", f"--tables={tables}",
                   f"--table-size={rows}", "--threads=2", "--create_secondary=off",
                   "oltp_write_only", "prepare"]
            with (self.logs / f"prepare-{schema}.log").open("w") as out:
                subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True,
                               timeout=PREPARE_TIMEOUT_S)
            self.wait_replicas(timeout_s=PREPARE_TIMEOUT_S)
        finally:
            self._restore(saved)
        self.purge_binlogs()
        self.dataset.tables += [Table(schema, f"sbtest{i}", rows) for i in range(1, tables + 1)]
        self.dataset.loaded_bytes = size
        log.info("loaded %s in %.0fs", schema, time.monotonic() - started)

    def _relax_durability(self) -> dict[str, dict[str, object]]:
        saved: dict[str, dict[str, object]] = {}
        for name in self.sandbox_info.servers:
            server = self.server(name)
            saved[name] = {var: server.scalar(get_global(var)) for var in LOAD_SETTINGS}
            for var, value in LOAD_SETTINGS.items():
                server.execute(set_global(var, value))
        return saved

    def _restore(self, saved: dict[str, dict[str, object]]) -> None:
        for name, values in saved.items():
            for var, value in values.items():
                self.server(name).execute(set_global(var, value))

    def purge_binlogs(self) -> None:
        """Loading writes the data again into every binlog; drop them, the clone skips
        them anyway and the disk is shared."""
        for name in self.sandbox_info.servers:
            server = self.server(name)
            server.execute(("FLUSH BINARY LOGS", ()))
            server.execute(("PURGE BINARY LOGS BEFORE NOW() + INTERVAL 1 SECOND", ()))

    def wait_replicas(self, timeout_s: float = 600) -> None:
        master = self.server("master")
        for name in self.sandbox_info.replicas:
            replication.wait_caught_up(self.server(name), master, timeout_s=timeout_s)

    def ship_files(self) -> tuple[list[str], int]:
        """Exactly the files hotcopy ships from the source (transfer/base.py's rules)."""
        source = self.server(SOURCE)
        datadir = str(self.datadir(SOURCE))
        excludes = list(STATIC_EXCLUDES) + log_excludes(
            datadir, [source.variable("log_bin_basename"), source.variable("relay_log_basename")])
        files: list[str] = []
        total = 0
        for root, _dirs, names in os.walk(datadir):
            for name in names:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, datadir)
                if os.path.isfile(path) and not is_excluded(rel, excludes):
                    files.append(rel)
                    total += os.path.getsize(path)
        return sorted(files), total


def drop_caches() -> None:
    """A cold page cache, so a copy reads from the disk (the whole machine's cache)."""
    subprocess.run(["sync"], check=True, timeout=600)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def with_etcd_journal(config_text: str, endpoints: list[str]) -> str:
    """The sandbox config with its SQLite [journal] replaced by etcd at ``endpoints``."""
    journal = (f'[journal]\nbackend = "etcd"\nendpoints = {json.dumps(endpoints)}\n'
               'prefix = "/bench"\n')
    text, n = re.subn(r"\[journal\]\npath = [^\n]*\n", lambda _: journal, config_text)
    if n != 1:
        raise ValueError("the sandbox config has no [journal] path to replace")
    return text
