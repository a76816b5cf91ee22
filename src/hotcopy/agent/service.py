"""What the `hotcopy agent` commands do, so the CLI only parses and renders.

SIGTERM/SIGINT stop the loop between polls; a re-seed still running is sent SIGTERM
and rolls itself back before the agent exits (systemd's stop timeout must allow it).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from hotcopy.agent import rails, status
from hotcopy.agent.loop import Agent, operator
from hotcopy.agent.metrics import AgentMetrics
from hotcopy.agent.store import AgentStore, SqliteAgentStore
from hotcopy.config import Config
from hotcopy.saga.factory import open_journal

log = logging.getLogger(__name__)


def open_store(config: Config) -> AgentStore:
    """The store lives where the journal does: etcd for agents on several hosts."""
    if config.journal.backend == "etcd":
        from hotcopy.agent.etcd_store import EtcdAgentStore
        from hotcopy.saga.factory import etcd_client

        return EtcdAgentStore(etcd_client(config.journal), config.shard.name,
                              prefix=config.journal.prefix,
                              lease_ttl_s=config.agent.lease_ttl_s)
    return SqliteAgentStore(config.agent_store_path())


def run(config: Config, *, observe_only: bool, metrics_port: int | None) -> None:
    journal = open_journal(config, writes=True)  # its workers start jobs in the same file
    store = open_store(config)
    metrics = AgentMetrics(config.shard.name)
    port = config.agent.metrics_port if metrics_port is None else metrics_port
    if port:
        metrics.serve(config.agent.metrics_address, port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping after this poll", signal.Signals(signum).name,
                 extra={"event": "agent-stopping"})
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        Agent(config, journal, store, metrics, observe_only=observe_only).run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        store.close()
        journal.close()
        log.info("agent stopped", extra={"event": "agent-stopped"})


def show(config: Config) -> dict[str, Any]:
    journal = open_journal(config)
    store = open_store(config)
    try:
        return status.build(config, store, journal, time.time())
    finally:
        store.close()
        journal.close()


def set_pause(config: Config, on: bool, reason: str) -> dict[str, Any]:
    store = open_store(config)
    try:
        store.set_pause(rails.Pause(time.time(), operator(), reason) if on else None)
        pause = store.pause()
        return {"paused": pause is not None,
                "pause": None if pause is None else vars(pause)}
    finally:
        store.close()


def mark(config: Config, name: str, reason: str) -> dict[str, Any]:
    config.server(name)  # an unknown name is refused (exit 2) before anything is stored
    store = open_store(config)
    try:
        text = f"{operator()} at {rails.stamp(time.time())}: {reason}"
        store.mark(name, text)
        return {"marked": name, "text": text}
    finally:
        store.close()
