"""Preflight: every file of both servers lives inside their datadirs, on one filesystem.

A snapshot covers one filesystem (one subvolume, one dataset) at the datadir; the swap
on the target moves one directory. Anything the server keeps elsewhere breaks that:
redo/undo logs or the system tablespace under another directory (absolute, relative
like ``../redo``, or through a symlink), Aria's log directory, a table created with
``DATA DIRECTORY``; and anything mounted inside the datadir (a nested mount, a btrfs
subvolume, a ZFS child dataset) is not in the snapshot and arrives empty. Paths are
resolved on the host itself (``realpath``), then compared; each refusal names the
setting and where it leads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hotcopy import remote
from hotcopy.errors import MySQLError
from hotcopy.hosts import Executor
from hotcopy.mysql.server import Server
from hotcopy.snapshot import zfs
from hotcopy.snapshot.base import inside

if TYPE_CHECKING:
    from hotcopy.workflows.preflight import Preflight

log = logging.getLogger(__name__)

#: Directory settings whose files belong to the datadir's consistent state.
DIRECTORY_SETTINGS = ("innodb_log_group_home_dir", "innodb_undo_directory",
                      "innodb_data_home_dir", "aria_log_dir_path")
DATA_FILE_PATH = "innodb_data_file_path"


def settings_of_server(server: Server) -> dict[str, str]:
    """The live values (what the running server uses now)."""
    values: dict[str, str] = {}
    for name in (*DIRECTORY_SETTINGS, DATA_FILE_PATH):
        value = server.variable(name)
        if value is not None:
            values[name] = str(value)
    return values


def settings_of_defaults(options: Mapping[str, str]) -> dict[str, str]:
    """The values the server's next start reads from its defaults file."""
    values: dict[str, str] = {}
    for name in (*DIRECTORY_SETTINGS, DATA_FILE_PATH):
        value = options.get(name.replace("_", "-"))
        if value is not None:
            values[name] = value
    return values


def _paths(settings: Mapping[str, str], datadir: str) -> list[tuple[str, str]]:
    """(label, path as the server resolves it against its datadir) for each file/dir."""
    out: list[tuple[str, str]] = []
    for name in DIRECTORY_SETTINGS:
        value = settings.get(name, "")
        if value:
            out.append((f"{name} = {value}", os.path.join(datadir, value)))
    home = settings.get("innodb_data_home_dir", "")
    for spec in settings.get(DATA_FILE_PATH, "").split(";"):
        file = spec.split(":", 1)[0].strip()
        if file:
            out.append((f"{DATA_FILE_PATH} = {settings[DATA_FILE_PATH]} ({file})",
                        os.path.join(datadir, home, file)))
    return out


def resolve(executor: Executor, paths: list[str]) -> list[str]:
    """The paths with every symlink and .. resolved on the host (missing parts allowed)."""
    if not paths:
        return []
    lines = executor.run(["realpath", "-m", "--", *paths], timeout=60).stdout.splitlines()
    if len(lines) != len(paths):
        raise MySQLError(f"on {executor.name}: realpath gave {len(lines)} answers for "
                         f"{len(paths)} paths")
    return lines


def check_settings(report: Preflight, role: str, name: str, executor: Executor,
                   datadir: str, settings: Mapping[str, str], origin: str,
                   tablespaces: list[tuple[str, str]] | None = None) -> None:
    """Errors for each setting or tablespace that leads outside the datadir."""
    labelled = _paths(settings, datadir)
    for space, path in tablespaces or []:
        labelled.append((f"tablespace {space} (DATA DIRECTORY)", os.path.join(datadir, path)))
    resolved = resolve(executor, [datadir, *(path for _, path in labelled)])
    real_datadir, targets = resolved[0], resolved[1:]
    for (label, _), target in zip(labelled, targets, strict=True):
        if not inside(target, real_datadir):
            report.error(f"{role}.layout", f"{role} {name}: {label} ({origin}) puts files at "
                         f"{target}, outside the datadir {real_datadir}: a snapshot or a "
                         "datadir swap cannot include them, so the copy would be "
                         "inconsistent",
                         hint="keep every InnoDB/Aria file inside the datadir (one "
                              "filesystem) on both servers; hotcopy cannot clone this layout")


def check_tablespaces(server: Server) -> list[tuple[str, str]]:
    """The source's tablespace files, as (name, path); a path may be relative."""
    rows = server.query(server.flavor.tablespace_files())
    return [(str(row.get("name") or "?"), str(row["path"])) for row in rows if row.get("path")]


def check_nested(report: Preflight, role: str, name: str, executor: Executor,
                 datadir: str) -> None:
    """A directory inside the datadir on another device: a mount, subvolume or dataset."""
    if not executor.exists(datadir):
        return
    nested = executor.run(remote.argv("nested_filesystems.sh", datadir),
                          timeout=600).stdout.split("\n")
    for path in filter(None, nested):
        report.error(f"{role}.layout", f"{role} {name}: {path} inside the datadir is another "
                     "filesystem (a mount point, a btrfs subvolume or a ZFS child dataset): "
                     "its files are not in a snapshot of the datadir and would arrive empty",
                     hint=f"move its contents into the datadir's own filesystem, or unmount "
                          f"it; hotcopy refuses to copy {datadir} as it is")


def check_not_mount_point(report: Preflight, role: str, name: str, executor: Executor,
                          datadir: str) -> None:
    """The target's datadir is moved aside by a rename, which a mount point refuses.

    A ZFS dataset's mountpoint is the exception: the swap remounts the dataset instead.
    """
    if zfs.dataset_mounted_at(executor, datadir):
        return
    found = executor.run(["findmnt", "-rn", "-o", "TARGET", "--mountpoint", datadir],
                         check=False).stdout.strip()
    if found:
        report.error(f"{role}.datadir", f"{role} {name}: the datadir {datadir} is itself a "
                     "mount point: it cannot be renamed aside and replaced (EBUSY at swap "
                     "time)",
                     hint="make the datadir a directory inside the mounted filesystem (e.g. "
                          f"{datadir}/data) and point datadir there")
