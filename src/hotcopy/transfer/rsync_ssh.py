"""rsync over ssh, no daemon: the target pulls from the source through sshd.

For locked-down hosts that allow nothing but ssh between them. The target runs
``rsync -e "ssh ..." USER@SOURCE:SNAPSHOT/ STAGING/``, so the data goes from the source
straight to the target (never through the controller), with the same excludes, partial
files kept for resuming, ``--info=progress2`` for progress, and retries that resume
where the last attempt stopped. The key and known_hosts used between the hosts are
files on the target, named in ``[transfer]`` (``ssh_identity_file``,
``ssh_known_hosts``, ``ssh_port``, ``ssh_options``); host keys are checked strictly
when a known_hosts file is given, and BatchMode turns a missing key into an error
instead of a prompt. The ssh user (``ssh_user``, root by default) must be able to read
the snapshot on the source: a non-root one only through sudo, so with
``servers.SOURCE.sudo`` the far rsync is started as ``sudo -n -- rsync``.

Nothing listens on either host; what may be left running after a crash is the rsync
clients on the target (their ssh sessions end with them), which the stop undo kills.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hotcopy.config import TransferConfig
from hotcopy.remote import missing_tools
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action
from hotcopy.transfer.base import (
    ProgressCallback,
    ServerHandle,
    TransferRequest,
    TransferResult,
    kill_marked,
)
from hotcopy.transfer.rsyncd import (
    RETRYABLE,
    client_commands,
    private_directory,
    run_clients,
    write_lists,
)

log = logging.getLogger(__name__)

# ssh itself exits with 255 when the connection fails or drops: worth another attempt.
SSH_RETRYABLE = frozenset(RETRYABLE | {255})


def ssh_argv(transfer: TransferConfig) -> list[str]:
    """The ssh client the target uses to reach the source; every word free of spaces."""
    argv = ["ssh", "-T", "-x", "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={transfer.connect_timeout_s}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
            "-o", "Compression=no"]
    if transfer.ssh_port:
        argv += ["-p", str(transfer.ssh_port)]
    if transfer.ssh_identity_file:
        argv += ["-i", transfer.ssh_identity_file, "-o", "IdentitiesOnly=yes"]
    if transfer.ssh_known_hosts:
        argv += ["-o", f"UserKnownHostsFile={transfer.ssh_known_hosts}",
                 "-o", "StrictHostKeyChecking=yes"]
    for option in transfer.ssh_options:
        argv += ["-o", option]
    return argv


def far_rsync(sudo: bool) -> list[str]:
    """The source's rsync as the target's ssh starts it: through ``sudo -n`` when the
    source's config says its logins are not root (``servers.SOURCE.sudo``)."""
    return ["--rsync-path=sudo -n -- rsync"] if sudo else []


def far_probe(sudo: bool) -> str:
    """The remote command line of the login probe: sudo must work without a password."""
    return "sudo -n -- rsync --version" if sudo else "command -v rsync"


def remote(transfer: TransferConfig, address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{transfer.ssh_user}@{host}"


class RsyncSsh:
    name = "rsync_ssh"

    def unsupported_reason(self, runtime: Runtime, request: TransferRequest,
                           snapshot_backend: str) -> str | None:
        """Tools on both ends, and a real login from target to source (read-only probe)."""
        target = runtime.executor(request.target)
        transfer = runtime.config.transfer
        for server, tools in ((request.target, ("rsync", "ssh")), (request.source, ("rsync",))):
            for tool in missing_tools(runtime.executor(server), tools):
                return f"{tool} is not installed on {server}"
        for key in ("ssh_identity_file", "ssh_known_hosts"):
            path = getattr(transfer, key)
            if path and not target.run(["test", "-r", path], check=False).ok:
                return f"transfer.{key} {path} does not exist on {request.target}"
        sudo = runtime.config.server(request.source).sudo
        probe = target.run([*ssh_argv(transfer), remote(transfer, request.source_address),
                            far_probe(sudo)], check=False,
                           timeout=transfer.connect_timeout_s + 30)
        if not probe.ok:
            why = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
            through = " through sudo -n" if sudo else ""
            return (f"{request.target} cannot run rsync{through} on {request.source} over "
                    f"ssh as {transfer.ssh_user}: {why}")
        return None

    def prepare(self, runtime: Runtime, request: TransferRequest) -> ServerHandle:
        state_dir = runtime.config.transfer.state_dir
        return ServerHandle(self.name, request.target, {
            "workdir": f"{state_dir}/{request.job_id}-rsync-ssh",
            "job_id": request.job_id,
        })

    def serve(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle) -> None:
        """Nothing to start: only a private place on the target for the file lists."""
        private_directory(runtime.executor(request.target), handle.params["workdir"])

    def pull(self, runtime: Runtime, request: TransferRequest, handle: ServerHandle,
             on_progress: ProgressCallback) -> TransferResult:
        transfer = runtime.config.transfer
        base = ["rsync", "-a", "--numeric-ids", "--partial", "--inplace",
                "--info=progress2,stats2",
                f"--timeout={transfer.io_timeout_s}", "-e", " ".join(ssh_argv(transfer)),
                *far_rsync(runtime.config.server(request.source).sudo),
                *(f"--exclude={pattern}" for pattern in request.excludes)]
        url = f"{remote(transfer, request.source_address)}:{request.source_path.rstrip('/')}/"
        lists = write_lists(runtime, request, handle.params["workdir"])
        return run_clients(runtime.executor(request.target), request,
                           client_commands(base, request, url, lists), on_progress,
                           stall_timeout_s=transfer.io_timeout_s, retryable=SSH_RETRYABLE)

    def stop(self, runtime: Runtime, handle: ServerHandle) -> None:
        stop_clients(runtime, handle.server, handle.params)


METHOD = RsyncSsh()


def stop_clients(runtime: Runtime, server: str, params: Mapping[str, Any]) -> None:
    executor = runtime.executor(server)
    kill_marked(executor, params["job_id"])
    executor.run(["rm", "-rf", "--", params["workdir"]])


@undo_action("transfer.rsync_ssh.stop",
             describe="stop the rsync-over-ssh clients and remove {workdir} on {server}")
def _undo_stop(runtime: Runtime, params: Mapping[str, Any]) -> None:
    stop_clients(runtime, params["server"], params)
