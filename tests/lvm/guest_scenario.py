"""Runs inside the LVM test guest (PID 1 is guest_init.sh): real LVM snapshots, end to end.

It records facts, not verdicts, in RESULTS/results.json; test_lvm_guest.py judges them
on the host. Each part catches its own failure, so a broken part still leaves the facts
of the others. Parts: the backend by hand on ext4 and XFS (snapshot under a writer,
read-only mount, copy, fill level, destroy), undo actions by name, the overflow watch,
refusals (guest_backend.py); then real MariaDB clones with the hotcopy CLI: an ext4
source, an XFS source killed mid-transfer and rolled back, the XFS source again to the
end (guest_clone.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

from guest_backend import backend_roundtrip, overflow, refusals, undo_by_name
from guest_clone import clone_parts
from guest_common import STARTED, VG, Results, make_lv, sh

#: The core (`scripts/test` runs it): an LVM source cloned under write load, and a clone
#: killed mid-transfer then rolled back. "all" (scripts/test-lvm) adds the rest.
#: ``clone:NAME[,NAME]`` runs only those clone parts: ``run_guest(work, parts=...)`` by hand.
CORE_CLONES = ("clone_ext4", "clone_killed")


def run_all(results: Results, work: Path, budget_s: float, parts: str = "all") -> None:
    with results.part("setup") as facts:
        sh("pvcreate", "-q", "-y", "/dev/vda")
        sh("vgcreate", "-q", VG, "/dev/vda")
        facts["lvm_version"] = sh("lvm", "version").splitlines()[0].strip()
        facts["kernel"] = os.uname().release
        facts["xfs"] = subprocess.run(["sh", "-c", "command -v mkfs.xfs"],
                                      capture_output=True, check=False).returncode == 0
        sh("mount", make_lv("work", "640M", "ext4"), "/srv")
    if parts == "core" or parts.startswith("clone:"):
        only = CORE_CLONES if parts == "core" else tuple(parts.removeprefix("clone:").split(","))
        clone_parts(results, work, ["ext4"], deadline=STARTED + budget_s, only=only)
        return
    filesystems = ["ext4", "xfs"] if results.facts("setup").get("xfs") else ["ext4"]
    for fstype in filesystems:
        with results.part(f"backend_{fstype}") as facts:
            backend_roundtrip(facts, fstype)
    with results.part("undo_by_name") as facts:
        undo_by_name(facts)
    with results.part("overflow") as facts:
        overflow(facts)
    with results.part("refusals") as facts:
        refusals(facts)
    for fstype in filesystems:
        with suppress(RuntimeError):
            sh("umount", f"/srv/{fstype}")
            sh("lvremove", "-q", "-f", f"{VG}/src{fstype}")
    clone_parts(results, work, filesystems, deadline=STARTED + budget_s)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True, help="host dir with the inputs")
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=600)
    parser.add_argument("--parts", default="all",
                        help="all, core, or clone:NAME[,NAME] (those clone parts alone, to "
                             "work on one of them)")
    args = parser.parse_args()
    results = Results(args.results)
    # Python imports are slow under emulation; the guest's clock says how slow.
    results.data["uptime_at_main_s"] = float(Path("/proc/uptime").read_text().split()[0])
    try:
        results.data["parts"] = args.parts
        run_all(results, args.work, args.budget, args.parts)
    finally:
        results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
