"""A controller's etcd lease, renewed in the background, judged by the controller's clock.

The lease is what lets another host take a dead controller's jobs over, so a live
controller must renew it, and must know when it can no longer count on it: etcd may
already have let it expire while the controller cannot reach etcd to find out. Hence
``valid_for``: the time left by *our* clock since the last renewal etcd acknowledged,
which is never later than etcd's own view.
"""

from __future__ import annotations

import logging
import threading
import time

from hotcopy.saga.etcd_client import EtcdClient, EtcdError

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, client: EtcdClient, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.lease_id = 0
        self._valid_until = 0.0  # monotonic: the lease is surely alive before this
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure(self) -> int:
        """The lease id, granted (and its renewal started) on first use; EtcdError else."""
        with self._lock:
            if self.lease_id:
                return self.lease_id
            started = time.monotonic()
            self.lease_id, ttl = self.client.lease_grant(self.ttl_s)
            self._valid_until = started + ttl
            self._stop.clear()
            self._thread = threading.Thread(target=self._renew, daemon=True,
                                            name=f"etcd-lease-{self.lease_id:x}")
            self._thread.start()
            return self.lease_id

    def _renew(self) -> None:
        """Every third of the TTL; on failure keep trying: ``valid_for`` runs down."""
        while not self._stop.wait(self.ttl_s / 3):
            started = time.monotonic()
            try:
                ttl = self.client.lease_keepalive(self.lease_id)
            except EtcdError as exc:
                log.warning("etcd lease %x not renewed: %s", self.lease_id, exc)
                continue
            if ttl <= 0:
                log.error("etcd lease %x has expired: this controller owns nothing now",
                          self.lease_id)
                self._valid_until = 0.0
                return
            self._valid_until = started + ttl

    def valid_for(self) -> float:
        """Seconds this process may still trust its lease, by its own clock."""
        return self._valid_until - time.monotonic()

    def hang(self) -> None:
        """Stop renewing without revoking, as a hung controller would (tests use it)."""
        self._stop.set()

    @property
    def active(self) -> bool:
        return bool(self.lease_id) or self._thread is not None

    def revoke(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.client.timeout_s * 2)
            self._thread = None
        if self.lease_id:
            try:
                self.client.lease_revoke(self.lease_id)
            except EtcdError as exc:
                log.warning("etcd lease %x not revoked (it expires by itself): %s",
                            self.lease_id, exc)
        self.lease_id = 0
        self._valid_until = 0.0
