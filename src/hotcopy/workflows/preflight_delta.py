"""Preflight of a delta re-seed: may the target's own datadir be the copy's starting point?

A stale or diverged replica usually holds most of what the source would send. With
``clone.delta`` the staging directory starts as a writable btrfs snapshot of the
target's datadir (instant, sharing every block; the datadir itself is never written)
and rsync compares every file block by block (``--ignore-times``: two servers' files of
equal size and mtime may still differ) and ships only the blocks that differ. What the
source does not have is deleted from the staging directory. The swap is as for a full
copy, so the old datadir stays untouched until the commit, and a rollback is as for a
full copy.

It pays when the link is what limits: a delta reads every block on both hosts and
sends checksums instead of data. ``auto`` takes it when the hosts differ and at least
half of what ships is already on the target, in files of the same path and size;
``on`` insists (and is refused with the reason when it cannot be honoured).
"""

from __future__ import annotations

import logging

from hotcopy.hosts import files
from hotcopy.progress import human_bytes
from hotcopy.runtime import Runtime
from hotcopy.transfer.base import list_tree, shippable
from hotcopy.workflows.preflight import Preflight

log = logging.getLogger(__name__)

DELTA_METHODS = ("rsyncd", "rsync_ssh")
#: auto: at least this share of what ships must already be on the target.
MOSTLY_THERE = 0.5


def check(report: Preflight, runtime: Runtime, source: str, target: str) -> None:
    mode = runtime.config.clone.delta
    report.facts["delta"] = False
    if mode == "off" or report.errors or report.facts.get("pipeline") != "snapshot":
        return
    refusal, reason = _assess(report, runtime, source, target, auto=mode == "auto")
    if refusal is None:
        report.facts["delta"] = True
        report.info("clone.delta", f"delta re-seed: {reason}")
    elif mode == "on":
        report.error("clone.delta", f'clone.delta = "on" cannot be honoured: {refusal}',
                     hint='set clone.delta = "auto" (a full copy when a delta cannot be '
                          'done) or "off"')
    else:
        report.info("clone.delta", f"delta re-seed: no, a full copy ({refusal})")


def _assess(report: Preflight, runtime: Runtime, source: str, target: str, *,
            auto: bool) -> tuple[str | None, str]:
    """(why not, None) or (None, why): the refusal first, so a cheap one costs no listing."""
    method = str(report.facts.get("transfer_method") or "")
    if method not in DELTA_METHODS:
        return (f"the {method or 'chosen'} method ships whole files; only rsync "
                f"({' or '.join(DELTA_METHODS)}) sends the blocks that differ"), ""
    config = runtime.config
    if auto and config.server(source).host == config.server(target).host:
        return ("source and target are one host: a delta reads every block twice, a full "
                "copy once"), ""
    datadir = config.server(target).datadir
    target_exec = runtime.executor(target)
    if not target_exec.exists(datadir) or not files.is_subvolume(target_exec, datadir):
        return (f"the target's datadir {datadir} is not a btrfs subvolume, so no writable "
                "snapshot of it can be the copy's starting point"), ""
    excludes = list(report.facts.get("excludes", []))
    wanted = {e.path: e.size for e in shippable(
        list_tree(runtime.executor(source), config.server(source).datadir), excludes)
        if not e.is_dir}
    there = {e.path: e.size for e in list_tree(target_exec, datadir) if not e.is_dir}
    ships = sum(wanted.values())
    matched = sum(size for path, size in wanted.items() if there.get(path) == size)
    share = matched / ships if ships else 0.0
    if auto and share < MOSTLY_THERE:
        return (f"only {share:.0%} of what ships is on the target already, in files of the "
                f"same path and size (at least {MOSTLY_THERE:.0%} makes a delta pay)"), ""
    return None, (f"{share:.0%} of what ships ({human_bytes(matched)} of "
                  f"{human_bytes(ships)}) is on the target's datadir already; the staging "
                  "directory starts as a snapshot of it and only blocks that differ travel")
