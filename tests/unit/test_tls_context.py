"""Sessions share one TLS context per set of TLS settings (PyMySQL would build one per
session, loading the system CA store each time: 24 ms of CPU per session)."""

from __future__ import annotations

import ssl
from typing import Any

from hotcopy.mysql.connection import _SharedTLSConnection


def _session(**tls: Any) -> Any:
    # defer_connect: PyMySQL builds the context in its constructor, no server needed.
    return _SharedTLSConnection(host="127.0.0.1", port=1, user="u", password="",
                                defer_connect=True, **tls)


def test_sessions_with_the_same_settings_share_one_context() -> None:
    first, second = _session(), _session()  # PyMySQL's default: TLS if the server has it
    assert first.ctx is second.ctx
    assert first.ctx.verify_mode == ssl.CERT_NONE  # built by PyMySQL's own rules: no CA
    assert first._ssl_required is False  # still only preferred, not required


def test_other_settings_get_their_own_context() -> None:
    preferred = _session()
    required = _session(ssl={"verify_mode": False, "check_hostname": False})
    assert required.ctx is not preferred.ctx
    assert required._ssl_required is True
    assert _session(ssl={"check_hostname": False, "verify_mode": False}).ctx is required.ctx


def test_tls_disabled_builds_no_context() -> None:
    assert _session(ssl_disabled=True).ssl is False
