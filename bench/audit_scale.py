"""How long `hotcopy audit` takes on a server with many tables (issue 15: 1,000 tables).

The data audit reads the catalog twice per server (information_schema.TABLES and
STATISTICS for every user table at once), never once per table; this measures that
against a real shard:

    sudo .venv/bin/python -m bench.audit_scale                 # own sandbox, 1,000 tables
    sudo .venv/bin/python -m bench.audit_scale --tables 3000 --runs 7
    sudo .venv/bin/python -m bench.audit_scale --config DIR/hotcopy.toml   # an existing one

Every 3rd table has no key, every 10th is MyISAM, the rest InnoDB with a primary key,
each with a few rows. Reported: the catalog reads alone, one server's whole audit
(in-process, every run), and the CLI end to end (a fresh process, as an operator runs
it). Results go to stdout and bench/results/audit_scale.json. The schema is dropped at
the end (an own sandbox is taken down).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hotcopy.config import load as load_config
from hotcopy.mysql import replication
from hotcopy.mysql.audit.facts import read_tables
from hotcopy.mysql.server import Server
from hotcopy.runtime import Runtime
from hotcopy.sandbox import down, up
from hotcopy.workflows.audit import audit_one

log = logging.getLogger(__name__)

SCHEMA = "audit_scale"
RESULTS = Path(__file__).parent / "results" / "audit_scale.json"


@contextmanager
def shard(config: str | None) -> Iterator[Path]:
    if config:
        yield Path(config)
        return
    parent = Path(tempfile.mkdtemp(prefix="hotcopy-audit-scale-"))
    parent.chmod(0o755)
    try:
        info = up(parent / "sandbox", replicas=1, filesystem="plain")
        yield info.config_path
    finally:
        try:
            down(parent / "sandbox")
        finally:
            shutil.rmtree(parent, ignore_errors=True)


def create_tables(master: Server, count: int) -> None:
    session = master.new_session()
    try:
        session.execute(f"DROP DATABASE IF EXISTS {SCHEMA}")
        session.execute(f"CREATE DATABASE {SCHEMA}")
        for i in range(count):
            name = f"{SCHEMA}.t{i:05d}"
            if i % 10 == 0:
                body, engine = "id INT PRIMARY KEY, v INT", "MyISAM"
            elif i % 3 == 0:
                body, engine = "id INT NOT NULL, v INT", "InnoDB"
            else:
                body, engine = "id INT PRIMARY KEY, v INT, UNIQUE KEY (v)", "InnoDB"
            session.execute(f"CREATE TABLE {name} ({body}) ENGINE={engine}")
            session.execute(f"INSERT INTO {name} VALUES (1, 1), (2, 2), (3, 3)")
    finally:
        session.close()


def timed(fn: Any, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def figures(samples: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(samples), 3),
            "min_s": round(min(samples), 3), "max_s": round(max(samples), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--config", help="an existing shard's hotcopy.toml (default: own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with shard(args.config) as config_path:
        rt = Runtime(load_config(config_path))
        master_name = next(n for n in rt.config.servers
                           if not replication.single_channel(rt.server(n)))
        replica_name = next(n for n in rt.config.servers if n != master_name)
        master, replica = rt.server(master_name), rt.server(replica_name)
        try:
            started = time.perf_counter()
            create_tables(master, args.tables)
            replication.wait_caught_up(replica, master, timeout_s=600)
            setup_s = time.perf_counter() - started
            seen = [t for t in read_tables(replica) if t.schema == SCHEMA]
            assert len(seen) == args.tables, f"{len(seen)} tables on the replica"
            catalog = timed(lambda: read_tables(replica), args.runs)
            audits: list[Any] = []
            whole = timed(lambda: audits.append(audit_one(rt, replica_name, fix=False)),
                          args.runs)
            flagged = audits[-1].data
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "hotcopy", "audit", "--config",
                                   str(config_path), "--json", replica_name],
                                  capture_output=True, text=True, timeout=600, check=False)
            cli_s = time.perf_counter() - start
            assert proc.stdout.strip(), proc.stderr
            result = {
                "tables": args.tables, "runs": args.runs, "server": replica_name,
                "version": replica.version_string, "setup_s": round(setup_s, 1),
                "catalog_reads": figures(catalog), "audit_one_server": figures(whole),
                "cli_end_to_end_s": round(cli_s, 3),
                "keyless_found": sum(len(v) for k, v in flagged["keyless_tables"].items()
                                     if k == SCHEMA),
                "non_transactional_found": sum(
                    len(v) for k, v in flagged["non_transactional_tables"].items()
                    if k == SCHEMA),
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        finally:
            session = master.new_session()
            try:
                session.execute(f"DROP DATABASE IF EXISTS {SCHEMA}")
            finally:
                session.close()
            rt.close()
    print(json.dumps(result, indent=2))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
