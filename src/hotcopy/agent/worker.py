"""A re-seed, failover, resume or rollback run by the agent in a child process of its own.

A child, not a thread: the clone's own signal handling (SIGTERM rolls it back) works
only in a main thread, and the leader keeps polling, renewing its lease and serving
metrics while a clone runs for hours. The child builds its own Runtime and journal
from the config file, exactly as `hotcopy clone` (or `hotcopy failover --yes`) would;
a resume or rollback goes to the workflow of the job's kind, as `hotcopy resume` does.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

log = logging.getLogger(__name__)


def _child(config_path: str, action: str, source: str | None, target: str | None,
           job_id: str | None) -> None:
    from hotcopy import config as config_module
    from hotcopy.progress import NullReporter
    from hotcopy.runtime import Runtime
    from hotcopy.saga.factory import open_journal
    from hotcopy.workflows import clone, failover, promotion_jobs

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's stop handler is not ours
    config = config_module.load(config_path)
    journal = open_journal(config, writes=True)
    runtime = Runtime(config)
    reporter = NullReporter()
    if action == "reseed":
        assert source is not None and target is not None
        outcome = clone.start(runtime, journal, source, target, reporter)
    elif action == "failover":
        # The workflow chooses the replica itself, after each has applied its relay log.
        outcome = failover.start(runtime, journal, reporter)
    else:
        assert job_id is not None
        workflow = promotion_jobs.module_for(journal.get_job(job_id).kind) or clone
        if action == "resume":
            outcome = workflow.resume(runtime, journal, job_id, reporter)
        else:
            outcome = workflow.rollback(runtime, journal, job_id, reporter)
    log.info("%s %s ended %s", action, outcome.job.id, outcome.job.state,
             extra={"event": "job-ended", "job": outcome.job.id,
                    "state": str(outcome.job.state), "exit_code": int(outcome.exit_code)})
    journal.close()  # gives up an etcd lease at once: the job is nobody's any more
    os._exit(int(outcome.exit_code))


@dataclass
class Worker:
    action: str
    source: str | None
    target: str | None
    job: str | None
    started: float
    process: BaseProcess
    history_row: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def exit_code(self) -> int | None:
        return self.process.exitcode

    def stop(self, timeout_s: float) -> None:
        """SIGTERM: the clone rolls itself back; wait for that, bounded."""
        if self.process.is_alive() and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGTERM)
        self.process.join(timeout_s)


def spawn(config_path: str, action: str, *, source: str | None = None,
          target: str | None = None, job: str | None = None) -> Worker:
    context = multiprocessing.get_context("fork")
    process = context.Process(target=_child, args=(config_path, action, source, target, job),
                              name=f"hotcopy-agent-{action}", daemon=False)
    process.start()
    log.info("started %s (pid %s)", action, process.pid,
             extra={"event": "worker-started", "action": action, "source": source,
                    "target": target, "job": job, "pid": process.pid})
    return Worker(action, source, target, job, time.time(), process)
