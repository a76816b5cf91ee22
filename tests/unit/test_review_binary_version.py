"""Review (Low): a stopped target's version comes from its server binary."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from hotcopy.hosts import LocalExecutor
from hotcopy.mysql.connection import ServerAddress
from hotcopy.mysql.mysqld import MysqldControl, parse_binary_version


def test_the_real_binary_reports_the_version_the_server_reports() -> None:
    if shutil.which("mariadbd") is None:
        pytest.fail("mariadbd is not installed: run scripts/bootstrap.sh")
    ctl = MysqldControl("db", LocalExecutor(), "/nonexistent.cnf", None,
                        ServerAddress("db", "127.0.0.1", 1), None, binary="mariadbd")
    version = ctl.binary_version()
    assert version is not None and version.split(".")[0].isdigit()
    # the same string a running server of this binary gives as VERSION() minus "-log"
    out = subprocess.run(["mariadbd", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert version in out


def test_parse_known_outputs() -> None:
    assert parse_binary_version("mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu"
                                " on x86_64 (Debian 12)\n") == "10.11.19-MariaDB-0+deb12u1"
    assert parse_binary_version("/usr/sbin/mysqld  Ver 8.0.36 for Linux on x86_64 (MySQL "
                                "Community Server - GPL)\n") == "8.0.36"
    assert parse_binary_version("garbage") is None
