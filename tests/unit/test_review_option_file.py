"""The admin option file gives the account and TLS, never where to connect (finding 1)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hotcopy.errors import ConfigError
from hotcopy.mysql.option_file import read_client_options


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_only_account_and_tls_are_taken_from_a_debian_cnf(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    name = write(tmp_path / "debian.cnf",
                 "[client]\nhost     = localhost\nuser     = debian-sys-maint\n"
                 "password = 'p#ss w\\\\rd'   # comment\nsocket   = /run/mysqld/mysqld.sock\n"
                 "ssl-ca = /etc/ca.pem\nssl_verify_server_cert\n"
                 "[mysql_upgrade]\nuser = other\nsocket = /elsewhere.sock\n")
    with caplog.at_level(logging.WARNING):
        options = read_client_options(name)
    assert options.user == "debian-sys-maint"
    assert options.password == "p#ss w\\rd"
    assert options.ssl == {"ca": "/etc/ca.pem", "check_hostname": True, "verify_mode": True}
    assert options.ignored == ("host", "socket")
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "`host`" in messages and "`socket`" in messages and "p#ss" not in messages
    assert "p#ss" not in repr(options)


def test_includes_are_followed_and_later_values_win(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d" / "50-pw.cnf", "[client]\npassword=\"from \\\"include\\\"\"\n")
    write(tmp_path / "conf.d" / "ignored.txt", "[client]\nuser=not-a-cnf\n")
    name = write(tmp_path / "main.cnf", "[client]\nuser=first\npassword=old\n"
                 "!includedir conf.d\n[client]\nuser = second # trailing\n")
    options = read_client_options(name)
    assert (options.user, options.password) == ("second", 'from "include"')


def test_bare_ssl_encrypts_without_verifying_and_skip_ssl_disables(tmp_path: Path) -> None:
    assert read_client_options(write(tmp_path / "a.cnf", "[client]\nssl\n")).ssl == {
        "verify_mode": False, "check_hostname": False}
    assert read_client_options(write(tmp_path / "b.cnf", "[client]\nskip-ssl\n")).ssl_disabled


def test_an_unreadable_file_or_a_broken_header_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        read_client_options(str(tmp_path / "missing.cnf"))
    with pytest.raises(ConfigError, match="line 1"):
        read_client_options(write(tmp_path / "bad.cnf", "[client\nuser=x\n"))


def test_the_group_given_to_mariabackup_holds_the_account_only(tmp_path: Path) -> None:
    """What the backup tool reads (checked with the real my_print_defaults) is the account."""
    import subprocess

    from hotcopy.mysql.option_file import render_client_group

    name = write(tmp_path / "admin.cnf", '[client]\nuser=admin\npassword="p\\\\q\\"x"\n'
                 "socket=/run/mysqld/mysqld.sock\nhost=localhost\n")
    rendered = tmp_path / "tool.cnf"
    rendered.write_bytes(render_client_group(name))
    out = subprocess.run(["my_print_defaults", f"--defaults-file={rendered}", "client"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["--user=admin", '--password=p\\q"x']
