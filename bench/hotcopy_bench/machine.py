"""The machine a benchmark ran on: numbers mean little without it."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any


def _run(args: list[str]) -> str:
    if shutil.which(args[0]) is None:
        return ""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    return (proc.stdout or proc.stderr).strip()


def _meminfo_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _disk(path: Path) -> str:
    """The filesystem and block device holding ``path``, with rotational flag and size."""
    source = _run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(path)])
    device = source.split()[0] if source else ""
    details = ""
    if device.startswith("/dev/"):
        details = _run(["lsblk", "-d", "-n", "-o", "NAME,ROTA,SIZE,MODEL", device])
    rota = details.split()[1] if len(details.split()) > 1 else "?"
    kind = {"0": "non-rotational", "1": "rotational"}.get(rota, "unknown type")
    return f"{source or 'unknown'} ({kind}; {' '.join(details.split()) or 'no lsblk data'})"


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else "not installed"


def describe(workdir: Path) -> dict[str, Any]:
    """nproc, memory, disk, kernel and the versions of every tool being compared."""
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_bytes": _meminfo_total(),
        "disk": _disk(workdir),
        "kernel": f"{platform.system()} {platform.release()}",
        "os": _run(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "mariadb": _first_line(_run(["mariadbd", "--version"])),
        "mariabackup": _first_line(_run(["mariabackup", "--version"])),
        "sysbench": _first_line(_run(["sysbench", "--version"])),
        "rsync": _first_line(_run(["rsync", "--version"])),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def git_state(repo: Path) -> dict[str, Any]:
    """Which code was measured: the commit and whether src/ had uncommitted changes."""
    commit = _run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(repo), "status", "--porcelain", "--", "src"])
    return {"commit": commit or "unknown", "src_dirty": bool(dirty),
            "src_changes": len(dirty.splitlines()) if dirty else 0}
