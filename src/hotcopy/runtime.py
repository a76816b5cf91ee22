"""The live handles a workflow and its undo actions work through.

Undo entries in the journal name servers, not connections; a rollback in a fresh
process builds a Runtime from the same config and finds every host and server again.
"""

from __future__ import annotations

import logging

from hotcopy.config import Config, ServerConfig
from hotcopy.hosts import Executor, SshOptions, executor_for
from hotcopy.mysql.connection import ServerAddress
from hotcopy.mysql.mysqld import MysqldControl
from hotcopy.mysql.server import Server

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._executors: dict[str, Executor] = {}
        self._servers: dict[str, Server] = {}
        self._mysqlds: dict[str, MysqldControl] = {}

    def server_config(self, name: str) -> ServerConfig:
        return self.config.server(name)

    def address(self, name: str) -> ServerAddress:
        conf = self.config.server(name)
        return ServerAddress(name, conf.host, conf.port)

    def executor(self, name: str) -> Executor:
        if name not in self._executors:
            conf = self.config.server(name)
            options = SshOptions(known_hosts=self.config.ssh.known_hosts,
                                 identity_file=self.config.ssh.identity_file,
                                 connect_timeout=self.config.ssh.connect_timeout_s)
            self._executors[name] = executor_for(conf.ssh, options, sudo=conf.sudo)
        return self._executors[name]

    def server(self, name: str) -> Server:
        if name not in self._servers:
            self._servers[name] = Server(self.address(name), self.config.mysql.option_file,
                                         self.config.mysql.connect_timeout_s)
        return self._servers[name]

    def server_at(self, name: str, host: str, port: int) -> Server:
        """A server that is not in the config (e.g. a master managed elsewhere)."""
        key = f"{name}@{host}:{port}"
        if key not in self._servers:
            self._servers[key] = Server(ServerAddress(name, host, port),
                                        self.config.mysql.option_file,
                                        self.config.mysql.connect_timeout_s)
        return self._servers[key]

    def mysqld(self, name: str) -> MysqldControl:
        if name not in self._mysqlds:
            conf = self.config.server(name)
            self._mysqlds[name] = MysqldControl(
                name, self.executor(name), conf.defaults_file, conf.service,
                self.address(name), self.config.mysql.option_file, conf.mysqld)
        return self._mysqlds[name]

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
