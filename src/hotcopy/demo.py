"""``hotcopy demo``: the whole story on a local sandbox shard, in about a minute.

A sandbox shard comes up (or is reused), the master gets some data and a steady write
load, replica2 is re-seeded from replica1 while the load runs, and then the proof is
printed: what the source paid, and that replica2 replicates and equals the master.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hotcopy import config as config_module
from hotcopy import sandbox
from hotcopy.errors import ExitCode
from hotcopy.loadgen import WriteLoad, seed
from hotcopy.mysql import replication
from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.progress import ConsoleReporter, human_bytes
from hotcopy.runtime import Runtime
from hotcopy.saga import SqliteJournal
from hotcopy.workflows import clone
from hotcopy.workflows.report import job_report

log = logging.getLogger(__name__)

SEED_ROWS = 200_000


def run(directory: Path, *, keep: bool, console: Console) -> int:
    console.rule("[bold]hotcopy demo")
    info = sandbox.up(directory)
    console.print(f"sandbox shard {'reused' if info.already_up else 'started'} in {directory}: "
                  f"master + {', '.join(info.replicas)} (MariaDB, datadirs on btrfs)")
    config = config_module.load(info.config_path)
    option_file = config.mysql.option_file
    master = info.address(info.master)
    console.print(f"seeding app.load_orders on the master with {SEED_ROWS:,} rows ...")
    seed(master, option_file, SEED_ROWS)
    runtime = Runtime(config)
    replication.wait_caught_up(runtime.server("replica2"), runtime.server(info.master),
                               timeout_s=300)
    journal = SqliteJournal(config.journal_path())
    console.print("starting a write load on the master, then: "
                  "[bold]hotcopy clone --source replica1 --target replica2[/]")
    with WriteLoad(master, option_file) as load:
        time.sleep(1)
        outcome = clone.start(Runtime(config), journal, "replica1", "replica2",
                              ConsoleReporter(console))
        time.sleep(1)
    console.print(f"write load stopped after {load.commits:,} commits on the master")
    report = job_report(journal, outcome.job.id)
    if outcome.exit_code != ExitCode.OK:
        console.print(f"[bold red]clone {report['job']} ended {report['state']}: "
                      f"{outcome.error}[/]")
        return int(outcome.exit_code)
    _print_proof(console, runtime, info.master, report)
    runtime.close()
    console.print(f"\nexplore: hotcopy show --config {info.config_path} {report['job']}")
    if keep:
        console.print(f"stop the sandbox: hotcopy sandbox down --dir {directory}")
    else:
        sandbox.down(directory)
    return 0


def _print_proof(console: Console, runtime: Runtime, master_name: str,
                 report: dict[str, object]) -> None:
    target, master = runtime.server("replica2"), runtime.server(master_name)
    replication.wait_caught_up(target, master, timeout_s=300)
    expected, actual = table_checksums(master), table_checksums(target)
    differing = differing_tables(expected, actual)
    status = replication.single_channel(target)
    table = Table(title=f"job {report['job']}: {report['state']}", show_header=False)
    table.add_row("source write lock", f"{report['source_lock_ms']:.1f} ms")
    table.add_row("source replication paused", f"{report['source_replication_paused_ms']:.1f} ms")
    table.add_row("bytes transferred", human_bytes(float(str(report['bytes_transferred']))))
    steps = report["steps"]
    assert isinstance(steps, list)
    total = sum(step["ms"] or 0 for step in steps) / 1000
    table.add_row("clone took", f"{total:.1f} s")
    if status is not None:
        gtid = target.scalar(target.flavor.replica_gtid_position())
        table.add_row("replica2 replication",
                      f"IO {status.io_running}, SQL {status.sql_running}, "
                      f"lag {status.seconds_behind}s, gtid {gtid}")
    verdict = ("[green]identical[/]" if not differing else
               f"[red]{len(differing)} differ: {', '.join(differing[:5])}[/]")
    table.add_row("checksums master vs replica2", f"{len(expected)} tables {verdict}")
    console.print(table)
