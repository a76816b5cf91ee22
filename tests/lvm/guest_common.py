"""What every part of the LVM guest scenario shares: commands, the VG, results, checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hotcopy.hosts import LocalExecutor
from hotcopy.snapshot.base import SnapshotPlan
from hotcopy.snapshot.lvm import exposed_mountpoint, find_volume, list_volumes

VG = "hcvg"
EX = LocalExecutor()
STARTED = time.monotonic()


def sh(*argv: str, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


class Results:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "results.json"
        self.data: dict[str, Any] = {"facts": {}, "errors": {}, "seconds": {}}

    def facts(self, part: str) -> dict[str, Any]:
        facts: dict[str, Any] = self.data["facts"].setdefault(part, {})
        return facts

    @contextmanager
    def part(self, name: str) -> Iterator[dict[str, Any]]:
        started = time.monotonic()
        print(f"scenario: {name} ...", flush=True)
        try:
            yield self.facts(name)
        except Exception:
            self.data["errors"][name] = traceback.format_exc()
            print(f"scenario: {name} FAILED\n{self.data['errors'][name]}", flush=True)
        finally:
            self.data["seconds"][name] = round(time.monotonic() - started, 2)
            self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - STARTED, 2)
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True, default=str))


def tree_sums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_lv(name: str, size: str, fstype: str | None) -> str:
    # -Wy -y: an old filesystem signature on reused extents would make lvcreate ask.
    sh("lvcreate", "-q", "-y", "-Wy", "-L", size, "-n", name, VG)
    device = f"/dev/{VG}/{name}"
    if fstype == "ext4":
        sh("mkfs.ext4", "-q", "-F", device)
    elif fstype == "xfs":
        sh("mkfs.xfs", "-q", "-f", device)
    return device


def mounts_matching(text: str) -> list[dict[str, str]]:
    rows = []
    for line in sh("findmnt", "-n", "-r", "-o", "SOURCE,TARGET,FSTYPE,OPTIONS").splitlines():
        source, target, fstype, options = line.split(" ", 3)
        if text in target:
            rows.append({"source": source, "target": target, "fstype": fstype,
                         "options": options})
    return rows


def snapshot_state(plan: SnapshotPlan) -> dict[str, Any]:
    mountpoint = exposed_mountpoint(plan)
    return {"lv_exists": find_volume(EX, plan.snapshot) is not None,
            "mounts": mounts_matching(mountpoint),
            "mountpoint_exists": os.path.exists(mountpoint)}


def leftovers(roots: list[Path]) -> list[str]:
    found = [f"lv {v.name}" for v in list_volumes(EX, VG) if v.lv.startswith("hotcopy-")]
    found += [f"mount {m['target']}" for m in mounts_matching(".hotcopy-")]
    for root in roots:
        found += [str(p) for p in root.iterdir() if ".hotcopy-" in p.name]
    state = Path("/run/hotcopy")
    if state.exists():
        found += [str(p) for p in state.iterdir()]
    found += [f"process {line}" for line in sh("ps", "-eo", "args").splitlines()
              if "rsync" in line and "--daemon" in line]
    return found
