"""User hooks: commands run on the controller at fixed points of a job.

This is how operators move a VIP, update a proxy or page someone when a master changes.
A hook is an argv list from ``[hooks]`` (no shell unless the user names one), run with
the controller's environment plus ``HOTCOPY_*`` variables describing the job, and killed
with its whole process group after ``hook_timeout_s``. No secret is ever put in a hook's
environment or argv.

API (small on purpose; clone and promotion workflows share it)::

    run_hook(config, "pre_switchover", {"HOTCOPY_JOB_ID": job, ...}, reporter)

A failing ``pre_*`` hook raises :class:`HookFailed` (a RefusedError, exit 2): the caller
runs pre-hooks before its first change, so nothing was changed. Any other failing hook
is reported as a warning and returns: the job's change already happened and a hook
cannot undo it.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping

from hotcopy.config import HOOK_NAMES, Config
from hotcopy.errors import RefusedError
from hotcopy.progress import Reporter

log = logging.getLogger(__name__)

__all__ = ["HOOK_NAMES", "HookFailed", "run_hook"]

_TAIL = 600


class HookFailed(RefusedError):
    """A pre-hook said no (or broke): the job stops before it changed anything."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"hook {name} failed: {detail}; nothing was changed",
                         hint=f"fix the command in [hooks] {name} (it runs before any "
                              "change), or remove it")
        self.name = name


def _tail(data: bytes | str | None) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
    return text.strip()[-_TAIL:]


def run_hook(config: Config, name: str, env: Mapping[str, str], reporter: Reporter) -> None:
    """Run hook ``name`` if configured; ``env`` adds HOTCOPY_* variables (no secrets)."""
    if name not in HOOK_NAMES:
        raise ValueError(f"unknown hook {name!r}")
    argv = getattr(config.hooks, name)
    if not argv:
        return
    timeout = config.hooks.hook_timeout_s
    full_env = {**os.environ, **env, "HOTCOPY_HOOK": name, "HOTCOPY_SHARD": config.shard.name}
    reporter.note(f"hook {name}: {shlex.join(argv)}")
    log.info("running hook %s: %s", name, shlex.join(argv))
    error = ""
    try:
        proc = subprocess.Popen(list(argv), env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        error = f"cannot run `{argv[0]}`: {exc.strerror or exc}"
    else:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            error = f"did not finish within {timeout:g}s (killed)"
        else:
            if proc.returncode != 0:
                error = f"exit status {proc.returncode}" + (
                    f": {_tail(err) or _tail(out)}" if (err or out) else "")
        if out:
            log.info("hook %s said: %s", name, _tail(out))
    if not error:
        return
    if name.startswith("pre_"):
        raise HookFailed(name, error)
    reporter.warning(f"hook {name} failed ({error}); the job's change stands")
