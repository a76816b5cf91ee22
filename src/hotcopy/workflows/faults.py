"""Rehearsal hooks: make hotcopy die or fail at a named step, on purpose.

Operators who want to see a rollback before trusting one in production, and the test
suite, set ``HOTCOPY_FAULT`` to a comma-separated list of:

  kill-before:STEP  kill-after:STEP    SIGKILL this process at that step boundary
  fail-before:STEP  fail-after:STEP    raise an error there (an orderly rollback follows)
  pause-before:STEP pause-after:STEP   SIGSTOP this process there: act on the hosts at
                                       a known point, then ``kill -CONT PID`` continues
  kill-during:pull:FRACTION            SIGKILL once the transfer passed that fraction
  kill-during:commit:0.5               SIGKILL after the commit point, before the old
                                       datadir is removed (`hotcopy cleanup` removes it)

Step names are those shown by ``hotcopy clone --dry-run`` and ``hotcopy show``.
Like a real crash of the controller, a kill leaves the hosts as they were at that
instant: a transfer already running on the target goes on by itself until
``hotcopy resume`` or ``hotcopy rollback`` stops it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass

from hotcopy.errors import HotcopyError, RefusedError

log = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "HOTCOPY_FAULT"
_KINDS = {"kill-before", "kill-after", "fail-before", "fail-after", "pause-before",
          "pause-after", "kill-during"}


class InjectedFault(HotcopyError):
    pass


@dataclass(frozen=True)
class Fault:
    kind: str
    step: str
    fraction: float = 0.0


def parse(spec: str) -> list[Fault]:
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, _, rest = item.partition(":")
        step, _, fraction = rest.partition(":")
        if kind not in _KINDS or not step or (kind == "kill-during") != bool(fraction):
            raise RefusedError(f"{ENVIRONMENT_VARIABLE}: cannot read '{item}'",
                               hint="use kill-before:STEP, kill-after:STEP, fail-before:STEP, "
                                    "fail-after:STEP, pause-before:STEP, pause-after:STEP "
                                    "or kill-during:pull:0.5")
        try:
            value = float(fraction) if fraction else 0.0
        except ValueError:
            raise RefusedError(f"{ENVIRONMENT_VARIABLE}: in '{item}' the fraction must be a "
                               "number between 0 and 1", hint="e.g. kill-during:pull:0.5") from None
        faults.append(Fault(kind, step, value))
    return faults


def _die(reason: str) -> None:
    log.warning("fault injection: SIGKILL %s", reason)
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _pause(reason: str) -> None:
    log.warning("fault injection: SIGSTOP %s (pid %d); SIGCONT continues", reason, os.getpid())
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGSTOP)


class Faults:
    def __init__(self, faults: list[Fault]) -> None:
        self.faults = faults

    @classmethod
    def from_environment(cls) -> Faults:
        return cls(parse(os.environ.get(ENVIRONMENT_VARIABLE, "")))

    def at(self, when: str, step: str) -> None:
        for fault in self.faults:
            if fault.step != step:
                continue
            if fault.kind == f"kill-{when}":
                _die(f"{when} step {step}")
            if fault.kind == f"pause-{when}":
                _pause(f"{when} step {step}")
            if fault.kind == f"fail-{when}":
                raise InjectedFault(f"injected failure {when} step {step} ({ENVIRONMENT_VARIABLE})")

    def progress(self, step: str, fraction: float) -> None:
        for fault in self.faults:
            if fault.kind == "kill-during" and fault.step == step and fraction >= fault.fraction:
                _die(f"during step {step} at {fraction:.0%}")
