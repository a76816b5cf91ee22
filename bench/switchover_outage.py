"""The write outage of a switchover, as a client sees it.

    sudo .venv/bin/python -m bench.switchover_outage [--runs 6] [--out bench/results]

Builds a sandbox shard (a master, three replicas), starts the acked-commit writer
(hotcopy.loadclient: a non-privileged account, one autocommit INSERT per commit,
following the master through an endpoint file that the post_switchover hook
rewrites), then switches the master back and forth. For every run: the outage (last
acknowledged commit on the old master to the first on the new one), the time from
read_only=ON to the new master writable, the whole job, and whether every
acknowledged commit is on the new master. Writes switchover.md and switchover.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hotcopy.config import load
from hotcopy.loadclient import AckedWriter, create_table, write_endpoint
from hotcopy.mysql.connection import connect
from hotcopy.runtime import Runtime
from hotcopy.sandbox import down, up

log = logging.getLogger(__name__)


def _step_ms(report: dict[str, Any], first: str, last: str) -> float:
    steps = {s["name"]: s for s in report["steps"]}
    return round((float(steps[last]["ended"]) - float(steps[first]["started"])) * 1000, 1)


def _run(args: argparse.Namespace) -> list[dict[str, Any]]:
    parent = Path(tempfile.mkdtemp(prefix="hotcopy-bench-switchover-"))
    parent.chmod(0o755)
    directory = parent / "shard"
    results: list[dict[str, Any]] = []
    try:
        info = up(directory, replicas=3)
        rt = Runtime(load(info.config_path))
        create_table(rt.address(info.master), str(info.admin_option_file))
        admin = connect(rt.address(info.master), str(info.admin_option_file))
        admin.execute("CREATE USER IF NOT EXISTS 'bench'@'%' IDENTIFIED BY 'bench-pw-1'")
        admin.execute("GRANT SELECT, INSERT ON app.* TO 'bench'@'%'")
        admin.close()
        app_cnf = parent / "app.cnf"
        app_cnf.write_text("[client]\nuser = bench\npassword = bench-pw-1\n")
        app_cnf.chmod(0o600)
        endpoint = parent / "endpoint"
        hook = ["sh", "-c", 'printf "%s:%s\\n" "$HOTCOPY_NEW_MASTER_HOST" '
                f'"$HOTCOPY_NEW_MASTER_PORT" > {endpoint}.tmp && mv {endpoint}.tmp {endpoint}']
        config = parent / "bench.toml"
        config.write_text(info.config_path.read_text()
                          + f"\n[hooks]\npost_switchover = {json.dumps(hook)}\n")
        current = info.master
        address = rt.address(current)
        write_endpoint(endpoint, address.host, address.port)
        with AckedWriter(endpoint, str(app_cnf)) as writer:
            writer.wait_for_acks(500)
            for i in range(args.runs):
                new = "replica1" if current == info.master else info.master
                proc = subprocess.run(
                    [sys.executable, "-m", "hotcopy", "switchover", "--config", str(config),
                     "--to", new, "--yes", "--json"], capture_output=True, text=True,
                    check=False, timeout=300)
                if proc.returncode != 0:
                    raise SystemExit(f"run {i + 1}: switchover failed: {proc.stderr}")
                writer.wait_for_acks(300)
                report = json.loads(proc.stdout)
                old_ep = f"{rt.address(current).host}:{rt.address(current).port}"
                new_ep = f"{rt.address(new).host}:{rt.address(new).port}"
                outage = writer.outage_s(old_ep, new_ep)
                acked = {a.n for a in writer.acks}
                rows = rt.server(new).query(("SELECT n FROM app.acked", ()))
                lost = len(acked - {int(r["n"]) for r in rows})
                results.append({
                    "run": i + 1, "from": current, "to": new,
                    "outage_ms": None if outage is None else round(outage * 1000, 1),
                    "read_only_to_writable_ms": _step_ms(report, "read_only_master", "promote"),
                    "job_ms": _step_ms(report, "lock_shard", "verify"),
                    "acked_commits": len(acked), "acked_lost": lost})
                log.warning("run %d %s -> %s: %s", i + 1, current, new, results[-1])
                # The next run measures its own outage: forget this one's acks.
                writer.acks.clear()
                writer.wait_for_acks(300)
                current = new
        rt.close()
    finally:
        try:
            down(directory)
        finally:
            subprocess.run(["rm", "-rf", str(parent)], check=False)
    return results


def _markdown(results: list[dict[str, Any]]) -> str:
    outages = [r["outage_ms"] for r in results if r["outage_ms"] is not None]
    windows = [r["read_only_to_writable_ms"] for r in results]
    lines = [
        "# Switchover: the client's write outage",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        "`bench/switchover_outage.py` on the sandbox shard (MariaDB, a master and three "
        "replicas on loopback). The writer commits one autocommit INSERT at a time and "
        "moves to the new master when the post_switchover hook rewrites its endpoint file.",
        "",
        "| run | from → to | outage ms | read_only → writable ms | job ms | acked | lost |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r['run']} | {r['from']} → {r['to']} | {r['outage_ms']} | "
              f"{r['read_only_to_writable_ms']} | {r['job_ms']} | {r['acked_commits']} | "
              f"{r['acked_lost']} |" for r in results]
    if outages:
        lines += ["", f"Median outage {statistics.median(outages):.0f} ms (min "
                      f"{min(outages):.0f}, max {max(outages):.0f}); median read_only → "
                      f"writable {statistics.median(windows):.0f} ms. The rest of the outage "
                      "is repointing the other replicas and demoting the old master, which "
                      "run before the post_switchover hook moves clients."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    results = _run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "switchover.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "switchover.md").write_text(_markdown(results))
    sys.stdout.write(_markdown(results))


if __name__ == "__main__":
    main()
