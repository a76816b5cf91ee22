"""Boots the LVM test guest and brings back what it found (shared/notes/lvm-guest.md).

This host's kernel has no device-mapper, so LVM cannot run here. A qemu guest (TCG:
software emulation) boots Debian's own kernel with this host's root as its root,
read-only over 9p, and runs tests/lvm/guest_scenario.py from this very checkout
against a scratch disk. The guest writes its results as a tar archive straight onto a
second disk; nothing else leaves it. Both disks are sparse files in a work directory
that the caller removes.

The work directory is under /var/tmp because the guest mounts fresh tmpfs on /tmp and
/run: it sees the host's files at their own paths everywhere else.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INIT = REPO / "tests" / "lvm" / "guest_init.sh"
SCRATCH_SIZE = 3 * 1024**3
RESULTS_SIZE = 64 * 1024**2
NINEP_MODULES = ("9p.ko", "9pnet.ko", "9pnet_virtio.ko")
HOST_TOOLS = ("qemu-system-x86_64", "lvcreate", "mariadbd", "mariadb-install-db", "rsync",
              "lsinitramfs")
SETUP_HINT = "run scripts/bootstrap.sh (qemu, Debian kernel, lvm2, 9p initramfs)"


@dataclass
class GuestRun:
    results: dict[str, Any]
    console: str
    seconds: float
    returncode: int | None
    work: Path
    notes: list[str] = field(default_factory=list)

    def facts(self, part: str) -> dict[str, Any]:
        facts: dict[str, Any] = self.results.get("facts", {}).get(part, {})
        return facts

    def console_tail(self, lines: int = 60) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def _kernels() -> list[tuple[Path, Path]]:
    """Debian kernels with their initramfs, newest first."""
    found = []
    for kernel in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        version = kernel.removeprefix("/boot/vmlinuz-")
        initrd = Path(f"/boot/initrd.img-{version}")
        if initrd.exists():
            found.append((Path(kernel), initrd))
    return found


def _has_9p(initrd: Path) -> bool:
    listing = subprocess.run(["lsinitramfs", str(initrd)], capture_output=True, text=True,
                             timeout=120, check=False).stdout
    names = {line.rsplit("/", 1)[-1] for line in listing.splitlines()}
    return all(module in names for module in NINEP_MODULES)


def find_kernel() -> tuple[Path, Path] | None:
    return next(((k, i) for k, i in _kernels() if _has_9p(i)), None)


def missing() -> str | None:
    """Why the guest cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "the LVM tier needs root (mariadb-install-db, sandbox layout)"
    tools = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if tools:
        return f"missing {', '.join(tools)}: {SETUP_HINT}"
    if not _kernels():
        return f"no kernel with an initramfs in /boot: {SETUP_HINT}"
    if find_kernel() is None:
        return f"no initramfs in /boot can mount a 9p root: {SETUP_HINT}"
    if not (REPO / ".venv" / "bin" / "python").exists():
        return "no .venv in the checkout: run scripts/bootstrap.sh"
    return None


def prepare_work(work: Path) -> None:
    """Install system tables on the host, where it takes seconds rather than minutes."""
    from hotcopy.sandbox import build
    from hotcopy.sandbox.layout import ServerSpec, server_paths

    work.chmod(0o755)  # the guest's mariadbd reads nothing here, but cp -a keeps modes
    spec = ServerSpec("template", "master", 1, 3401, "plain")
    paths = server_paths(work, "template")
    build.prepare_filesystem(paths, spec, 0)
    build.install_system_tables(paths, spec)
    build.own_datadir(paths)


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)


def qemu_command(work: Path, kernel: Path, initrd: Path, budget_s: int, *,
                 memory_mb: int, cpus: int, parts: str = "all") -> list[str]:
    append = " ".join([
        "console=ttyS0", "root=hostroot", "rootfstype=9p",
        "rootflags=trans=virtio,version=9p2000.L,cache=loose,msize=262144", "ro",
        f"init={INIT}", "panic=-1", "quiet",
        f"hotcopy_repo={REPO}", f"hotcopy_work={work}", f"hotcopy_budget={budget_s}",
        f"hotcopy_parts={parts}",
    ])
    return [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max",
        "-m", str(memory_mb), "-smp", str(cpus), "-nographic", "-no-reboot", "-net", "none",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,"
                   "readonly=on,multidevs=remap",
        # In this order they are vda and vdb; the serials let the guest make sure.
        "-drive", f"file={work / 'scratch.img'},format=raw,if=none,id=scratch",
        "-device", "virtio-blk-pci,drive=scratch,serial=hc-scratch",
        "-drive", f"file={work / 'results.img'},format=raw,if=none,id=results",
        "-device", "virtio-blk-pci,drive=results,serial=hc-results",
    ]


def run_guest(work: Path, *, budget_s: int = 900, memory_mb: int = 2048,
              cpus: int = 2, parts: str = "all") -> GuestRun:
    """Boot, let the scenario run within budget_s, read the results disk."""
    found = find_kernel()
    if found is None:
        raise RuntimeError(f"no usable guest kernel: {SETUP_HINT}")
    _sparse(work / "scratch.img", SCRATCH_SIZE)
    _sparse(work / "results.img", RESULTS_SIZE)
    command = qemu_command(work, *found, budget_s, memory_mb=memory_mb, cpus=cpus, parts=parts)
    console_path = work / "console.log"
    started = time.monotonic()
    notes = []
    with open(console_path, "wb") as console:
        try:
            proc = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=console,
                                  stderr=subprocess.STDOUT, timeout=budget_s + 120,
                                  check=False)
            returncode: int | None = proc.returncode
        except subprocess.TimeoutExpired:  # run() has killed qemu already
            returncode = None
            notes.append(f"qemu did not power off within {budget_s + 120}s and was killed")
    seconds = time.monotonic() - started
    console_text = console_path.read_text(errors="replace")
    return GuestRun(_read_results(work, notes), console_text, seconds, returncode, work, notes)


def _read_results(work: Path, notes: list[str]) -> dict[str, Any]:
    out = work / "results"
    out.mkdir(exist_ok=True)
    try:
        with tarfile.open(work / "results.img", "r:") as archive:
            archive.extractall(out, filter="data")
    except (tarfile.TarError, OSError) as exc:
        notes.append(f"no results archive on the results disk ({exc})")
        return {}
    path = out / "results.json"
    if not path.exists():
        notes.append("the results archive holds no results.json")
        return {}
    results: dict[str, Any] = json.loads(path.read_text())
    exit_code = out / "exit_code"
    results["scenario_exit_code"] = exit_code.read_text().strip() if exit_code.exists() else None
    return results


def keep_artifacts(run: GuestRun, destination: Path) -> None:
    """Copy the console log and the results out before the work dir goes."""
    destination.mkdir(parents=True, exist_ok=True)
    (destination / "console.log").write_text(run.console)
    results = run.work / "results"
    if results.exists():
        shutil.copytree(results, destination / "results", dirs_exist_ok=True)
