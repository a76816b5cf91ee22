"""A small etcd v3 client over the gRPC JSON gateway, standard library only.

Why our own and not a library: python-etcd3 is unmaintained and breaks with protobuf
>= 4; Debian 12's python3-etcd3gw 2.0.0 talks to ``/v3alpha``, which Debian 12's etcd
3.4.23 answers with 404; PyPI's etcd3gw talks to one endpoint and has no user/password
auth. hotcopy needs few calls (range, put, txn, deleterange, lease grant/keepalive/
revoke/timetolive, authenticate), several endpoints with fail-over, and bounded retries
across a leader change, which is what Patroni also does over this gateway. The journal
is the only user, so replacing this module later touches nothing else.

Secrets: the password is sent in a request body only, never logged; the auth token
travels in a header and is never logged either.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# gRPC codes the gateway returns that mean "not applied, try again or elsewhere".
_RETRY_MESSAGES = ("leader changed", "no leader", "timed out", "too many requests",
                   "not capable", "unhealthy cluster", "stopped")
_AUTH_MESSAGES = ("invalid auth token", "user name is empty", "authentication failed",
                  "permission denied", "invalid auth management")


class EtcdError(Exception):
    """etcd answered, and the answer is an error that retrying will not fix."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered usefully within the retries; says which and why."""

    def __init__(self, tried: Sequence[tuple[str, str]]) -> None:
        detail = "; ".join(f"{endpoint}: {why}" for endpoint, why in tried)
        super().__init__(f"no etcd endpoint answered ({detail})")
        self.tried = list(tried)


class EtcdAuthError(EtcdError):
    """Credentials or TLS were rejected: retrying the same ones cannot succeed."""


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> KeyValue:
        return cls(unb64(raw["key"]), unb64(raw.get("value", "")),
                   int(raw.get("create_revision", 0)), int(raw.get("mod_revision", 0)),
                   int(raw.get("version", 0)), int(raw.get("lease", 0)))


@dataclass(frozen=True)
class TlsSettings:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class EtcdClient:
    """Talks to whichever endpoint answers; sticks to it until it fails."""

    def __init__(
        self, endpoints: Sequence[str], *, timeout_s: float = 5.0, rounds: int = 3,
        tls: TlsSettings | None = None, user: str | None = None, password: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self.rounds = rounds
        self._tls = tls or TlsSettings()
        self._user = user
        self._password = password
        self._token: str | None = None
        self._current = 0
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        if any(e.startswith("https://") for e in self.endpoints):
            self._ssl = ssl.create_default_context(cafile=self._tls.ca_file)
            if self._tls.cert_file:
                self._ssl.load_cert_chain(self._tls.cert_file, self._tls.key_file)

    # transport ------------------------------------------------------------------

    def _once(self, endpoint: str, path: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        url = urlsplit(endpoint)
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(url.hostname or "", url.port or 2379,
                                               timeout=self.timeout_s, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(url.hostname or "", url.port or 2379,
                                              timeout=self.timeout_s)
        headers = {"Content-Type": "application/json"}
        if self._token and path != "/v3/auth/authenticate":
            headers["Authorization"] = self._token
        try:
            conn.request("POST", path, json.dumps(body), headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = {"error": data[:200].decode(errors="replace")}
        return response.status, parsed

    def _authenticate(self, endpoint: str) -> None:
        if self._user is None:
            return
        status, answer = self._once(endpoint, "/v3/auth/authenticate",
                                    {"name": self._user, "password": self._password or ""})
        if status != 200 or "token" not in answer:
            message = str(answer.get("message") or answer.get("error") or status)
            raise EtcdAuthError(f"etcd at {endpoint} refused the credentials of user "
                                f"'{self._user}': {message}")
        self._token = str(answer["token"])

    def call(self, path: str, body: Mapping[str, Any], *,
             rounds: int | None = None) -> dict[str, Any]:
        """POST to the gateway, failing over between endpoints, a bounded number of rounds.

        A request that timed out may have been applied; every caller (the journal) makes
        its writes safe to repeat, which is what makes retrying them correct.
        """
        tried: list[tuple[str, str]] = []
        with self._lock:
            total = self.rounds if rounds is None else rounds
            for round_ in range(total):
                for offset in range(len(self.endpoints)):
                    index = (self._current + offset) % len(self.endpoints)
                    endpoint = self.endpoints[index]
                    try:
                        if self._user is not None and self._token is None:
                            self._authenticate(endpoint)
                        status, answer = self._once(endpoint, path, body)
                    except ssl.SSLError as exc:
                        raise EtcdAuthError(f"TLS with etcd at {endpoint} failed: "
                                            f"{exc.reason or exc}") from exc
                    except (OSError, http.client.HTTPException) as exc:
                        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                        tried.append((endpoint, why))
                        log.debug("etcd %s%s: %s", endpoint, path, why)
                        continue
                    message = str(answer.get("message") or answer.get("error") or "")
                    if status == 200 and not answer.get("error"):
                        self._current = index
                        return dict(answer)
                    lowered = message.lower()
                    if any(m in lowered for m in _AUTH_MESSAGES):
                        if "invalid auth token" in lowered and self._user is not None:
                            self._token = None  # expired token: authenticate again
                            tried.append((endpoint, message))
                            continue
                        raise EtcdAuthError(f"etcd at {endpoint}: {message}")
                    if status >= 500 and any(m in lowered for m in _RETRY_MESSAGES):
                        tried.append((endpoint, message))
                        continue
                    if status == 404 and not message:
                        message = f"{path} not found (is this etcd >= 3.4 with its gateway?)"
                    raise EtcdError(f"etcd at {endpoint}{path}: {message or status}")
                if round_ + 1 < total:
                    time.sleep(min(0.2 * 2 ** round_, 2.0))
        raise EtcdUnavailable(tried[-2 * len(self.endpoints):])

    # kv ---------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        kvs = self.call("/v3/kv/range", {"key": b64(key)}).get("kvs") or []
        return KeyValue.parse(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        answer = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix),
                                             "sort_order": "ASCEND", "sort_target": "KEY"})
        return [KeyValue.parse(kv) for kv in answer.get("kvs") or []]

    def txn(
        self, compare: Sequence[Mapping[str, Any]], success: Sequence[Mapping[str, Any]],
        failure: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[bool, list[dict[str, Any]]]:
        answer = self.call("/v3/kv/txn", {"compare": list(compare), "success": list(success),
                                          "failure": list(failure)})
        return bool(answer.get("succeeded")), list(answer.get("responses") or [])

    # leases -----------------------------------------------------------------------

    def lease_grant(self, ttl_s: int) -> tuple[int, int]:
        answer = self.call("/v3/lease/grant", {"TTL": ttl_s})
        return int(answer["ID"]), int(answer["TTL"])

    def lease_keepalive(self, lease_id: int) -> int:
        """Remaining TTL after the renewal; 0 or less means the lease is gone."""
        answer = self.call("/v3/lease/keepalive", {"ID": str(lease_id)})
        return int((answer.get("result") or {}).get("TTL", 0))

    def lease_ttl(self, lease_id: int) -> int:
        """Seconds left on a lease; -1 when it has expired or never existed."""
        answer = self.call("/v3/lease/timetolive", {"ID": str(lease_id)})
        return int(answer.get("TTL", -1))

    def lease_revoke(self, lease_id: int) -> None:
        try:  # one pass only: an unreachable etcd lets the lease expire by itself
            self.call("/v3/lease/revoke", {"ID": str(lease_id)}, rounds=1)
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise


# txn building blocks ------------------------------------------------------------------

def cmp_create(key: str, revision: int) -> dict[str, Any]:
    """The key was created at ``revision`` (0: it does not exist)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL",
            "create_revision": str(revision)}


def cmp_mod(key: str, revision: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def op_put(key: str, value: str, lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def op_get(key: str) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def op_delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def first_kv(response: Mapping[str, Any]) -> KeyValue | None:
    kvs = (response.get("response_range") or {}).get("kvs") or []
    return KeyValue.parse(kvs[0]) if kvs else None
