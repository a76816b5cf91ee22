"""How hotcopy runs commands on the hosts of a shard: locally or through OpenSSH."""

from hotcopy.hosts.base import CommandResult, Executor
from hotcopy.hosts.local import LocalExecutor
from hotcopy.hosts.ssh import SshExecutor, SshOptions


def executor_for(destination: str, ssh_options: SshOptions | None = None, *,
                 sudo: bool = False) -> Executor:
    """``"local"`` runs here; anything else is an OpenSSH destination such as ``root@db1``
    (with sudo: a non-root login whose every command runs through ``sudo -n``)."""
    if destination == "local":
        return LocalExecutor()
    return SshExecutor(destination, ssh_options or SshOptions(), sudo=sudo)


__all__ = ["CommandResult", "Executor", "LocalExecutor", "SshExecutor", "SshOptions",
           "executor_for"]
