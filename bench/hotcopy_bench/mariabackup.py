"""What users would pick instead of hotcopy: mariabackup, streamed, on the same source.

The pipeline a DBA runs by hand to re-seed a replica from another one:
``mariabackup --backup --safe-slave-backup --slave-info --stream=xbstream`` on the
source piped into ``mbstream -x`` next to the target's datadir (the target keeps
serving meanwhile, as with hotcopy's staging), ``--prepare``, stop the target, move
the old datadir aside and ``--move-back`` the prepared one, start, CHANGE MASTER at
the GTID mariabackup recorded, and wait for catch-up. The old datadir is removed after
the clock stops, as hotcopy removes its own after catch-up.
"""

from __future__ import annotations

import configparser
import itertools
import logging
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

from bench.hotcopy_bench import parsers
from bench.hotcopy_bench.pipelines import PipelineError
from bench.hotcopy_bench.shard import SOURCE, TARGET, Shard, remove_tree
from hotcopy.mysql import replication
from hotcopy.mysql.flavor import Coordinates
from hotcopy.sandbox.build import own_datadir
from hotcopy.sandbox.layout import server_paths

log = logging.getLogger(__name__)

BACKUP_TIMEOUT_S = 3600
START_TIMEOUT_S = 900
CATCHUP_TIMEOUT_S = 1800


def _collect(stream: IO[bytes], lines: list[parsers.LogLine], sink: Path) -> None:
    with sink.open("w") as out:
        for raw in stream:
            text = raw.decode(errors="replace")
            lines.append(parsers.mariabackup_line(time.time(), text))
            out.write(text)


def _repl_account(option_file: Path) -> tuple[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(option_file)
    return (parser.get("client", "user").strip("'\""),
            parser.get("client", "password").strip("'\""))


class MariabackupClone:
    def __init__(self, shard: Shard, logs: Path, tag: str) -> None:
        self.shard = shard
        self.logs = logs
        self.tag = tag
        datadir = shard.datadir(TARGET)
        self.datadir = datadir
        self.staging = datadir.parent / "bench-mb-new"
        self.old = datadir.parent / "bench-mb-old"
        self.tmp = shard.sandbox_info.directory / "bench-mb-tmp"
        self.marks: dict[str, float] = {}
        self.lines: list[parsers.LogLine] = []
        self._moved = False

    def run(self) -> dict[str, Any]:
        for path in (self.staging, self.old, self.tmp):
            remove_tree(path)
        self.staging.mkdir()
        start = time.time()
        self.marks["start"] = start
        try:
            self._backup()
            self._prepare()
            gtid = self._recorded_gtid()
            self._swap()
            self._start_target()
            self._change_master(gtid)
            caught = self._catch_up()
        except BaseException:
            self._restore_target()
            raise
        finally:
            for path in (self.staging, self.tmp):
                remove_tree(path)
        end = time.time()
        remove_tree(self.old)
        return self._figures(start, end, caught)

    def _mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def _backup(self) -> None:
        cmd = ["mariabackup", f"--defaults-file={self.shard.defaults_file(SOURCE)}", "--backup",
               "--safe-slave-backup", "--slave-info", "--stream=xbstream", "--user=root",
               f"--socket={self.shard.socket(SOURCE)}", f"--target-dir={self.tmp}"]
        backup = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert backup.stdout is not None and backup.stderr is not None
        extract = subprocess.Popen(["mbstream", "-x", "-C", str(self.staging)],
                                   stdin=backup.stdout, stderr=subprocess.PIPE)
        backup.stdout.close()
        reader = threading.Thread(target=_collect, daemon=True, args=(
            backup.stderr, self.lines, self.logs / f"{self.tag}-backup.log"))
        reader.start()
        try:
            backup.wait(BACKUP_TIMEOUT_S)
            _, extract_err = extract.communicate(timeout=BACKUP_TIMEOUT_S)
        finally:
            for proc in (backup, extract):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
            reader.join(30)
        self._mark("backup")
        stages = parsers.backup_stages(self.lines)
        if backup.returncode != 0 or extract.returncode != 0 or not stages.completed:
            tail = "; ".join(line.message for line in self.lines[-3:])
            raise PipelineError(f"mariabackup --backup exited {backup.returncode}, mbstream "
                                f"{extract.returncode}: {tail} "
                                f"{extract_err.decode(errors='replace')[-200:]}")

    def _run_logged(self, cmd: list[str], name: str) -> None:
        with (self.logs / f"{self.tag}-{name}.log").open("w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=BACKUP_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise PipelineError(f"{' '.join(cmd[:2])} exited {proc.returncode}; "
                                f"see {self.logs / f'{self.tag}-{name}.log'}")

    def _prepare(self) -> None:
        self._run_logged(["mariabackup", "--prepare", f"--target-dir={self.staging}"], "prepare")
        self._mark("prepare")

    def _recorded_gtid(self) -> str:
        info = self.staging / "xtrabackup_slave_info"
        gtid = parsers.slave_info_gtid(info.read_text()) if info.exists() else None
        if not gtid:
            raise PipelineError(f"no gtid_slave_pos in {info}")
        return gtid

    def _swap(self) -> None:
        control = self.shard.rt.mysqld(TARGET)
        self.shard.server(TARGET).close()
        control.stop(timeout=START_TIMEOUT_S)
        self._mark("stop_target")
        self.datadir.rename(self.old)
        self._moved = True
        self.datadir.mkdir(mode=0o750)
        self._run_logged(["mariabackup", f"--defaults-file={self.shard.defaults_file(TARGET)}",
                          "--move-back", f"--target-dir={self.staging}"], "move-back")
        own_datadir(server_paths(self.shard.sandbox_info.directory, TARGET))
        self._mark("move_back")

    def _start_target(self) -> None:
        self.shard.rt.mysqld(TARGET).start(timeout=START_TIMEOUT_S)
        server = self.shard.server(TARGET)
        server.close()
        server.forget_flavor()
        self._mark("start_target")

    def _change_master(self, gtid: str) -> None:
        info = self.shard.sandbox_info
        server = self.shard.server(TARGET)
        flavor = server.flavor
        user, password = _repl_account(info.repl_option_file)
        coords = Coordinates(master_host=info.address("master").host,
                             master_port=info.ports["master"], master_user=user,
                             master_log_file="", master_log_pos=0, gtid=gtid,
                             gtid_variable=flavor.gtid_variable(), flavor=flavor.name)
        server.execute(flavor.stop_replica())
        server.execute(flavor.reset_replica_all())
        for statement in flavor.prepare_gtid_position(gtid):
            server.execute(statement)
        server.execute(flavor.change_master(coords, user, password))
        server.execute(flavor.start_replica())
        self._mark("change_master")

    def _catch_up(self) -> float:
        result = replication.wait_caught_up(self.shard.server(TARGET), self.shard.server("master"),
                                            timeout_s=CATCHUP_TIMEOUT_S)
        self._mark("catch_up")
        return result.elapsed_s

    def _restore_target(self) -> None:
        """After a failure: put the target's previous datadir back and start it."""
        control = self.shard.rt.mysqld(TARGET)
        try:
            if self._moved and self.old.exists():
                self.shard.server(TARGET).close()
                control.stop(timeout=START_TIMEOUT_S)
                remove_tree(self.datadir)
                self.old.rename(self.datadir)
            control.start(timeout=START_TIMEOUT_S)
        except Exception:
            log.exception("could not restore %s after a failed mariabackup run", TARGET)

    def _figures(self, start: float, end: float, caught_s: float) -> dict[str, Any]:
        stages = parsers.backup_stages(self.lines)
        order = ["start", "backup", "prepare", "stop_target", "move_back", "start_target",
                 "change_master", "catch_up"]
        steps_ms = {name: (self.marks[name] - self.marks[prev]) * 1000
                    for prev, name in itertools.pairwise(order)}
        return {
            "start": start, "end": end, "e2e_s": end - start,
            "block_commit_ms": stages.block_commit_ms,
            "block_commit_log_s": stages.block_commit_log_s,
            "sql_thread_stopped_log_ms": stages.sql_thread_stopped_ms,
            "catchup_s": caught_s,
            # The target is down from the moment it is stopped until the restored
            # datadir's mysqld answers: stop_target, move_back and start_target.
            "target_downtime_ms": (self.marks["start_target"] - self.marks["prepare"]) * 1000,
            "steps_ms": steps_ms,
            "copy_window": [self.marks["start"], self.marks["backup"]],
        }


def mariabackup_clone(shard: Shard, logs: Path, tag: str) -> dict[str, Any]:
    return MariabackupClone(shard, logs, tag).run()
