"""The config reference (docs/config.md), generated from the pydantic model itself.

A hand-written reference drifts: a key is added, renamed or given a new default and the
page still shows the old one. This module walks the model (every table, every key, its
type, default and limits) and writes the page; a test fails when the committed page is
not what this generates, or when a key has no explanation. Regenerate with
``python -m hotcopy.config_doc > docs/config.md``.
"""

from __future__ import annotations

import logging
import types
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from hotcopy.config import Config

log = logging.getLogger(__name__)

#: What a key does, for keys whose Field has no description of its own.
EXPLAINED: dict[str, str] = {
    "shard.name": "name of the shard; recorded with every job and lock",
    "mysql.option_file": "option file of the admin account ([client] user=, password=, "
                         "ssl-*), mode 0600; the same account on every server",
    "mysql.connect_timeout_s": "seconds to wait for a server to accept a connection",
    "replication.option_file": "option file of the replication account the new replica "
                               "uses; unset: taken from the source replica's own settings",
    "journal.backend": "sqlite: one file on the control host; etcd: a cluster shared by "
                       "many controllers (journal, locks and leases, fenced)",
    "journal.tls_ca_file": "etcd: CA that signed the members' certificates",
    "journal.tls_cert_file": "etcd: client certificate",
    "journal.tls_key_file": "etcd: the client certificate's key",
    "clone.warm_target": "ship the source's buffer pool list and load it on the target, so "
                         "it starts warm (false: no list is shipped at all)",
    "clone.buffer_pool_dump_timeout_s": "longest the source's buffer pool dump may take",
    "clone.buffer_pool_load_wait_s": "how long to wait for the target's buffer pool load",
    "hooks.pre_clone": "argv run before a clone changes anything; failing aborts it (exit 2)",
    "hooks.before_stop_target": "argv run before the target's mysqld stops (drain it from "
                                "a load balancer or proxy)",
    "hooks.after_commit": "argv run after a clone committed (put the target back)",
    "hooks.on_rollback": "argv run after a clone was rolled back",
    "hooks.pre_switchover": "argv run before a switchover changes anything; failing aborts",
    "hooks.post_switchover": "argv run after a switchover (move a VIP, update a proxy)",
    "hooks.pre_failover": "argv run before a failover changes anything; failing aborts",
    "hooks.post_failover": "argv run after a failover",
    "hooks.hook_timeout_s": "a hook still running after this is killed (and counts as failed)",
    "agent.max_reseeds_per_day": "at most this many automated re-seeds per 24 h, fleet-wide",
    "agent.metrics_address": "address of the Prometheus metrics endpoint",
    "journal.path": "the SQLite journal (default /var/lib/hotcopy/journal.sqlite); its "
                    "directory must exist (or `clone --create-journal`); keep it on the "
                    "control host's local disk, backed up",
    "clone.max_source_lag_s": "refuse a source further behind its master than this",
    "clone.lock_wait_timeout_s": "each attempt at the backup lock gives up after this",
    "clone.lock_attempts": "attempts at the backup lock before the clone rolls back",
    "clone.lock_retry_delay_s": "pause between two lock attempts",
    "clone.preflush_dirty_pages": "flush InnoDB dirty pages before pausing the source, so "
                                  "the target's crash recovery is short",
    "clone.preflush_timeout_s": "longest the pre-flush may take",
    "clone.preflush_min_checkpoint_age_mb": "skip the pre-flush when the source's checkpoint "
                                            "age (the redo the target would replay) is "
                                            "below this: such a recovery is quicker than a "
                                            "flush (0 = flush whenever pages are dirty)",
    "clone.catchup_timeout_s": "longest the new replica may take to catch up",
    "clone.fast_catchup": "until it has caught up, the new target commits without waiting "
                          "for fsync (innodb_flush_log_at_trx_commit = 2, sync_binlog = 0; "
                          "its own values come back before verify and commit): its datadir "
                          "is discarded by any rollback until then",
    "clone.verify": "checksum: compare table checksums with the source (a second short "
                    "pause of its SQL thread); catchup: only wait for catch-up",
    "clone.keep_old_datadir": "keep the target's old datadir after the commit",
    "clone.delta": "on: the staging directory starts as a writable btrfs snapshot of the "
                   "target's own datadir and rsync ships only the blocks that differ; auto: "
                   "so when it pays (README: delta re-seed); off: a full copy",
    "clone.free_space_margin": "free space the target needs beyond the data, as a fraction "
                               "(at least 128 MiB)",
    "clone.start_timeout_s": "longest the target's mysqld may take to start (crash "
                             "recovery included)",
    "transfer.writeback_interval_s": "while copying, start writing the staging files "
                                     "changed since the last pass back to disk this often "
                                     "(posix_fadvise DONTNEED, no wait; 0: only the sync "
                                     "once the copy ends), so the old mysqld's shutdown "
                                     "does not wait for them while the target is down",
    "transfer.method": "how the snapshot travels; auto: the first that fits both hosts "
                       "(zfs_send, rsyncd, rsync_ssh, stream)",
    "transfer.port_range": "TCP ports a transfer listener may use (rsyncd on the source; "
                           "stream and zfs_send on the target): open these between replicas",
    "transfer.timeout_s": "longest a whole transfer may take",
    "transfer.connect_timeout_s": "seconds a transfer's connection to the other host may "
                                  "take before it is retried",
    "transfer.retries": "times an interrupted transfer is retried (resuming in place)",
    "transfer.max_source_latency_factor": "pace the copy (AIMD, every second) so that the "
                                          "source's probe latency (p90) stays within this "
                                          "factor of its baseline; needs the stream method",
    "transfer.throttle_floor_kbps": "the slowest rate the latency throttle may pace the copy "
                                    "to, so that it always ends",
    "transfer.latency_probe_table": "schema.table (integer primary key) the throttle's probe "
                                    "reads at random keys, so it waits for the disk as the "
                                    "source's clients do; default: a read of "
                                    "mysql.innodb_table_stats, which sees CPU contention only",
    "transfer.ssh_user": "rsync_ssh: the user the target logs into the source as",
    "transfer.ssh_port": "rsync_ssh: the source's sshd port",
    "transfer.ssh_identity_file": "rsync_ssh: the key on the target",
    "transfer.ssh_known_hosts": "rsync_ssh: known_hosts on the target",
    "ssh.known_hosts": "known_hosts for hotcopy's own ssh to the servers (strict checking)",
    "ssh.identity_file": "key for hotcopy's own ssh to the servers",
    "ssh.connect_timeout_s": "seconds for an ssh connection to a server",
    "servers.NAME.host": "SQL address; the transfer binds to it too",
    "servers.NAME.port": "SQL port",
    "servers.NAME.ssh": "'local', or an OpenSSH destination such as root@10.0.0.1",
    "servers.NAME.sudo": "the ssh user is not root: every command on the host runs through "
                         "`sudo -n` (README: the sudoers line it needs)",
    "servers.NAME.datadir": "the server's datadir",
    "servers.NAME.defaults_file": "the my.cnf mysqld starts with when no service is set",
    "servers.NAME.service": "systemd unit that starts and stops mysqld",
    "servers.NAME.mysqld": "mysqld binary to start when no service is set",
    "servers.NAME.snapshot": "auto: detect the backend from the datadir's filesystem",
}


def _type(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f'"{value}"' for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        names = [_type(arg) for arg in get_args(annotation) if arg is not type(None)]
        return " \\| ".join(names) + " (optional)"
    if origin is tuple:
        args = get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type(args[0])}"
        return "[" + ", ".join(_type(arg) for arg in args) + "]"
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number",
                "bool": "boolean"}.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.default
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _limits(field: Any) -> str:
    marks = {Ge: ("≥", "ge"), Gt: (">", "gt"), Le: ("≤", "le"), Lt: ("<", "lt"),
             MinLen: ("min length", "min_length"), MaxLen: ("max length", "max_length")}
    parts = []
    for item in field.metadata:
        for kind, (sign, attr) in marks.items():
            if isinstance(item, kind):
                parts.append(f"{sign} {getattr(item, attr)}")
    return ", ".join(parts)


def tables() -> list[tuple[str, type[BaseModel]]]:
    """(``shard``, ShardConfig), ... , (``servers.NAME``, ServerConfig), in model order."""
    found = []
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if get_origin(annotation) is dict:
            found.append((f"{name}.NAME", get_args(annotation)[1]))
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.append((name, annotation))
    return found


def keys() -> list[tuple[str, Any]]:
    """Every key as ``table.key`` with its pydantic field."""
    return [(f"{table}.{key}", field) for table, model in tables()
            for key, field in model.model_fields.items()]


def explanation(path: str, field: Any) -> str | None:
    return EXPLAINED.get(path) or field.description


def render() -> str:
    lines = ["# Configuration reference", "",
             "Generated from hotcopy's config model by `python -m hotcopy.config_doc`; do not "
             "edit by hand (a test fails when this page and the model disagree).", "",
             "Every table is optional except `[shard]`, `[mysql]` and at least one "
             "`[servers.NAME]`. Unknown keys are refused, with the nearest known key named.",
             ""]
    for table, model in tables():
        lines += [f"## `[{table}]`", ""]
        doc = (model.__doc__ or "").strip().splitlines()
        if doc and not doc[0].startswith(("Usage docs", "!!!")):
            lines += [doc[0], ""]
        lines += ["| key | type | default | limits | what it does |",
                  "| --- | --- | --- | --- | --- |"]
        for key, field in model.model_fields.items():
            what = explanation(f"{table}.{key}", field) or ""
            lines.append(f"| `{key}` | {_type(field.annotation)} | {_default(field)} | "
                         f"{_limits(field)} | {what} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
