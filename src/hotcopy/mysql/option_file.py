"""Credentials from a MySQL option file, and nothing else from it.

An admin option file is often a copy of a host's ``[client]`` group (Debian's
``debian.cnf`` has ``host=localhost`` and ``socket=/run/mysqld/mysqld.sock``). Handed to
the driver as a "default file", such a ``socket=`` line beats the configured host:
every session would silently reach the local server instead of the one named in the
config, and hotcopy would lock, snapshot and verify the wrong server. So the file is
read here, with the syntax the mysql client accepts, and only the account (``user``,
``password``) and TLS (``ssl*``) settings are taken; where to connect always comes from
``[servers.NAME]``. Every other key is ignored with one warning naming it.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from hotcopy.errors import ConfigError

log = logging.getLogger(__name__)

#: The group the mysql client and PyMySQL read; program groups do not apply to us.
GROUP = "client"
#: TLS settings PyMySQL can honour (name in the file, with "-" for "_").
SSL_PATH_KEYS = {"ssl-ca": "ca", "ssl-capath": "capath", "ssl-cert": "cert",
                 "ssl-key": "key", "ssl-cipher": "cipher"}
SSL_FLAG_KEYS = ("ssl", "ssl-verify-server-cert", "skip-ssl")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "r": "\r", "\\": "\\", "s": " ",
            '"': '"', "'": "'"}
_MAX_INCLUDE_DEPTH = 10
_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class ClientOptions:
    user: str | None = None
    password: str | None = None
    ssl: dict[str, Any] = field(default_factory=dict)
    ssl_disabled: bool = False
    ignored: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never the password, not even in a traceback
        return (f"ClientOptions(user={self.user!r}, password={'***' if self.password else None},"
                f" ssl={sorted(self.ssl)}, ignored={self.ignored})")


def read_client_options(path: str) -> ClientOptions:
    """user/password/ssl of the ``[client]`` group; warns once per ignored key and file."""
    values: dict[str, str | None] = {}
    _read(path, values, depth=0)
    ignored: list[str] = []
    ssl: dict[str, Any] = {}
    ssl_disabled = False
    for key, value in values.items():
        if key in ("user", "password"):
            continue
        if key in SSL_PATH_KEYS and value:
            ssl[SSL_PATH_KEYS[key]] = value
        elif key == "ssl-verify-server-cert":
            verify = _flag(value)
            ssl["check_hostname"] = verify
            ssl["verify_mode"] = verify
        elif key == "ssl":
            ssl_disabled = not _flag(value)
        elif key == "skip-ssl":
            ssl_disabled = _flag(value)
        else:
            ignored.append(key)
    for key in ignored:
        if (path, key) not in _warned:
            _warned.add((path, key))
            log.warning("%s: `%s` in [%s] is ignored: hotcopy takes only user, password and "
                        "ssl-* from option files; where to connect comes from the config's "
                        "[servers.NAME] host and port", path, key, GROUP)
    if "ssl" in values and _flag(values["ssl"]) and not ssl:
        ssl["verify_mode"] = False  # `ssl` alone: encrypt, without a CA to verify against
    if ssl:
        ssl.setdefault("check_hostname", False)  # as the client: only with verify-server-cert
    return ClientOptions(user=values.get("user"), password=values.get("password"), ssl=ssl,
                         ssl_disabled=ssl_disabled, ignored=tuple(ignored))


def _flag(value: str | None) -> bool:
    """A boolean option as the client reads it: bare, 1/ON/TRUE, or 0/OFF/FALSE."""
    return value is None or value.strip().lower() not in ("0", "off", "false", "no")


def _read(path: str, values: dict[str, str | None], depth: int) -> None:
    if depth > _MAX_INCLUDE_DEPTH:
        raise ConfigError(f"{path}: !include nested more than {_MAX_INCLUDE_DEPTH} deep")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"option file {path} cannot be read: {exc.strerror}",
                          hint="it must exist and be readable by the user running hotcopy "
                               "(mode 0600)") from None
    group: str | None = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("!include "):
            _read(_relative(path, line[len("!include "):].strip()), values, depth + 1)
            continue
        if line.startswith("!includedir "):
            directory = _relative(path, line[len("!includedir "):].strip())
            for name in sorted(glob.glob(os.path.join(glob.escape(directory), "*.cnf"))):
                _read(name, values, depth + 1)
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{path} line {number}: a group header must end with ]")
            group = line[1:-1].strip()
            continue
        if group != GROUP:
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower().replace("_", "-")
        values[key] = _value(value) if sep else None


def _relative(path: str, target: str) -> str:
    return target if os.path.isabs(target) else os.path.join(os.path.dirname(path), target)


def _value(text: str) -> str:
    """A value as the client reads it: quotes, backslash escapes, trailing # comments."""
    text = text.strip()
    if text[:1] in ("'", '"'):
        quote, out, i = text[0], [], 1
        while i < len(text) and text[i] != quote:
            if text[i] == "\\" and i + 1 < len(text):
                out.append(_ESCAPES.get(text[i + 1], text[i + 1]))
                i += 2
                continue
            out.append(text[i])
            i += 1
        return "".join(out)
    out, i = [], 0
    while i < len(text):
        if text[i] == "#":
            break
        if text[i] == "\\" and i + 1 < len(text):
            out.append(_ESCAPES.get(text[i + 1], "\\" + text[i + 1]))
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out).rstrip()


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_client_group(path: str) -> bytes:
    """The account of path as a ``[client]`` group of its own, for a tool's option file.

    What a tool such as mariabackup gets is what hotcopy itself uses: user, password and
    TLS paths, never a stray socket= or host= from the operator's file.
    """
    options = read_client_options(path)
    lines = ["[client]"]
    if options.user:
        lines.append(f"user = {_quoted(options.user)}")
    if options.password:
        lines.append(f"password = {_quoted(options.password)}")
    for key, name in SSL_PATH_KEYS.items():
        if options.ssl.get(name):
            lines.append(f"{key} = {_quoted(str(options.ssl[name]))}")
    if options.ssl.get("check_hostname"):
        lines.append("ssl-verify-server-cert")
    return ("\n".join(lines) + "\n").encode()
