"""Review finding 3 (and Low: a datadir that is a mount point): the storage layout of
both servers is checked with resolved paths, and each refusal names the setting and path.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from hotcopy.sandbox import SandboxInfo

from .helpers import runtime
from .test_refusals import edited_config, refuse

SOURCE, TARGET = "replica1", "replica2"
DRY = ("--dry-run",)


def test_a_table_with_data_directory_outside_the_source_datadir_is_refused(
        sandbox: SandboxInfo) -> None:
    outside = sandbox.datadir(SOURCE).parent / "review-remote-tables"
    outside.mkdir()
    shutil.chown(outside, "mysql", "mysql")
    rt = runtime(sandbox)
    session = rt.server(SOURCE).new_session()
    try:
        session.execute("SET SESSION sql_log_bin = 0")
        session.execute("CREATE DATABASE review_layout")
        session.execute(f"CREATE TABLE review_layout.remote (id INT PRIMARY KEY) "
                        f"ENGINE=InnoDB DATA DIRECTORY='{outside}'")
        # Before the fix this was accepted: the copy would carry a dictionary entry
        # pointing at a file that never travelled.
        refuse(sandbox, SOURCE, TARGET, "tablespace review_layout/remote (DATA DIRECTORY)",
               f"{outside}/review_layout/remote.ibd", "outside the datadir",
               modes=DRY, marker=False)
    finally:
        session.execute("DROP DATABASE IF EXISTS review_layout")
        session.close()
        rt.close()
        shutil.rmtree(outside, ignore_errors=True)


def test_a_btrfs_subvolume_inside_the_source_datadir_is_refused(sandbox: SandboxInfo) -> None:
    nested = sandbox.datadir(SOURCE) / "review_nested"
    subprocess.run(["btrfs", "subvolume", "create", str(nested)], check=True,
                   capture_output=True, timeout=60)
    try:
        refuse(sandbox, SOURCE, TARGET, f"{nested} inside the datadir is another filesystem",
               modes=DRY, marker=False)
    finally:
        subprocess.run(["btrfs", "subvolume", "delete", str(nested)], check=True,
                       capture_output=True, timeout=60)


def test_target_redo_logs_outside_its_datadir_are_refused(sandbox: SandboxInfo,
                                                          tmp_path: Path) -> None:
    """A relative ``../redo`` in the defaults file the target will be restarted with."""
    cnf = tmp_path / "replica2.cnf"
    cnf.write_text(sandbox.defaults_file(TARGET).read_text().replace(
        "[mysqld]\n", "[mysqld]\ninnodb_log_group_home_dir = ../redo\n", 1))
    config = edited_config(sandbox, tmp_path, {(f"servers.{TARGET}", "defaults_file"):
                                               f'"{cnf}"'})
    redo = sandbox.datadir(TARGET).parent / "redo"
    refuse(sandbox, SOURCE, TARGET, "innodb_log_group_home_dir = ../redo", f"in {cnf}",
           f"puts files at {redo}, outside the datadir", config=config, modes=DRY,
           marker=False)


def test_target_datadir_that_is_a_mount_point_is_refused(sandbox: SandboxInfo) -> None:
    datadir = sandbox.datadir(TARGET)
    subprocess.run(["mount", "--bind", str(datadir), str(datadir)], check=True, timeout=60)
    try:
        refuse(sandbox, SOURCE, TARGET, f"the datadir {datadir} is itself a mount point",
               modes=DRY, marker=False)
    finally:
        subprocess.run(["umount", str(datadir)], check=True, timeout=60)
