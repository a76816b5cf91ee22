"""The agent's loop: poll, decide, and (as leader only) start a workflow.

The agent never changes a host itself: every change it causes is a clone, failover,
resume or rollback run through the workflow an operator would start (hotcopy.workflows
clone or failover), journaled with its undo like one an operator starts. Everything
it concludes is recorded as a decision with its reasons.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from hotcopy.agent import candidate, decisions, worker
from hotcopy.agent.health import HealthMonitor
from hotcopy.agent.metrics import AgentMetrics
from hotcopy.agent.model import Decision, FailoverRecord, Policy, ReseedRecord, RunningJob
from hotcopy.agent.store import AgentStore
from hotcopy.config import Config
from hotcopy.errors import HotcopyError
from hotcopy.runtime import Runtime
from hotcopy.saga import TERMINAL_STATES, Job, JobState, Journal, LockInfo
from hotcopy.saga.journal import hotcopy_pid_alive
from hotcopy.workflows.promotion_jobs import module_for
from hotcopy.workflows.promotion_steps import PONR
from hotcopy.workflows.report import job_report

log = logging.getLogger(__name__)

DAY_S = 86400.0


def policy_of(config: Config) -> Policy:
    agent = config.agent
    return Policy(grace_s=agent.grace_s, flap_window_s=agent.flap_window_s,
                  max_reseeds_per_day=agent.max_reseeds_per_day,
                  lag_threshold_s=agent.lag_threshold_s,
                  free_space_margin=config.clone.free_space_margin,
                  auto_failover=agent.auto_failover, failover_after_s=agent.failover_after_s,
                  max_failovers_per_day=agent.max_failovers_per_day)


def agent_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def owner_alive(job: Job, locks: list[LockInfo], *, etcd: bool) -> bool:
    """Whether a job's controller still runs, as far as the journal can tell.

    etcd: the job's locks live on its owner's lease, so a live lease is a live owner
    and no lock left means the lease is gone. SQLite: a pid check, which only works on
    this host; an owner elsewhere is trusted to be alive (that set-up needs etcd).
    """
    leases = [row.lease_remaining_s for row in locks
              if row.job_id == job.id and row.lease_remaining_s is not None]
    if leases:
        return max(leases) > 0
    if job.owner_host == socket.gethostname():
        return hotcopy_pid_alive(job.owner_pid)
    return not etcd


def unfinished(journal: Journal) -> list[Job]:
    return [job for job in journal.list_jobs(100) if not job.terminal]


def running_jobs(journal: Journal, *, etcd: bool) -> list[RunningJob]:
    jobs = unfinished(journal)
    locks = journal.locks() if jobs else []
    return [RunningJob(j.id, j.kind, str(j.state), j.params.get("source"),
                       j.params.get("target"), owner_alive(j, locks, etcd=etcd))
            for j in jobs]


class Agent:
    def __init__(self, config: Config, journal: Journal, store: AgentStore,
                 metrics: AgentMetrics, *, observe_only: bool,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.journal = journal
        self.store = store
        self.metrics = metrics
        self.observe_only = observe_only or config.agent.observe_only
        self.clock = clock
        self.id = agent_identity()
        self.policy = policy_of(config)
        self.runtime = Runtime(config)
        self.monitor = HealthMonitor(self.runtime, self.policy,
                                     audit_interval_s=config.agent.audit_interval_s)
        self.worker: worker.Worker | None = None
        self.is_leader = False
        self._last: dict[tuple[str, str | None], tuple[Any, ...]] = {}
        #: When the master was first seen down in the current run of polls (the leader's
        #: own memory, like the grace period: a new leader counts again, only ever later).
        self._down_since: float | None = None

    # -- the loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        log.info("agent %s started for shard %s%s", self.id, self.config.shard.name,
                 " (observe only)" if self.observe_only else "",
                 extra={"event": "agent-started", "agent": self.id,
                        "observe_only": self.observe_only})
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except HotcopyError as exc:
                    log.error("poll failed: %s", exc.message, extra={"event": "poll-failed"})
                except Exception as exc:  # a store or server error: never the agent's end
                    log.error("poll failed: %s", exc, exc_info=True,
                              extra={"event": "poll-failed"})
                stop.wait(self.config.agent.interval_s)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        running = self.worker
        if running is not None and running.alive:
            job_id = self._job_of(running)
            if running.action == "failover":
                # Interrupted past its point of no return it would stop for attention with
                # a new master half set up; before it, the shard has no master at all.
                # Either way finishing (bounded, it takes seconds) is the better stop.
                log.info("stopping: waiting for the failover (job %s) to end", job_id,
                         extra={"event": "worker-finishing", "job": job_id})
                running.process.join(600)
                if running.alive:
                    running.stop(timeout_s=600)
            elif job_id and self.journal.get_job(job_id).state is JobState.COMMITTED:
                # Past the commit only cleanup is left (the old datadir): let it finish
                # rather than interrupt it and leave the old datadir behind.
                log.info("stopping: job %s is committed, waiting for its cleanup", job_id,
                         extra={"event": "worker-finishing", "job": job_id})
                running.process.join(600)
            else:
                log.warning("stopping: %s of %s is rolled back", running.action,
                            running.target, extra={"event": "worker-stopping"})
                running.stop(timeout_s=600)
            self._reap()
        self.store.resign(self.id)
        self.runtime.close()

    def tick(self) -> None:
        now = self.clock()
        self.is_leader = self.store.campaign(self.id, self.config.agent.lease_ttl_s, now)
        pause = self.store.pause()
        self.metrics.flags(leader=self.is_leader, paused=pause is not None,
                           observe_only=self.observe_only)
        self.store.heartbeat(self.id, {"host": socket.gethostname(), "pid": os.getpid(),
                                       "leader": self.is_leader,
                                       "observe_only": self.observe_only}, now)
        if not self.is_leader:
            return
        self._reap()
        observation = self.monitor.observe(self.store.marks(), now)
        self.metrics.observed(observation)
        jobs = running_jobs(self.journal, etcd=self.config.journal.backend == "etcd")
        if self.worker is not None and self.worker.job not in {j.id for j in jobs}:
            # Spawned but its job not journaled yet (or already ended): it still holds
            # the shard, or a second re-seed could be decided in between.
            kind = "failover" if self.worker.action == "failover" else "clone"
            jobs.append(RunningJob(self.worker.job or "(starting)", kind, "starting",
                                   self.worker.source, self.worker.target, True))
        made = self._takeovers(jobs, now)
        since = self._down_since = decisions.down_since(self._down_since, observation)
        horizon = now - max(DAY_S, self.policy.flap_window_s)
        history = self.store.reseeds(horizon)
        failovers = self.store.failovers(horizon) if not observation.master_up else []
        master = observation.replicas.get(observation.master or "")
        chosen = None
        if (self.policy.auto_failover and since is not None
                and now - since >= self.policy.failover_after_s):
            chosen = candidate.read(self.runtime, observation)
        made += decisions.decide(observation, policy=self.policy, pause=pause, jobs=jobs,
                                 history=history, observe_only=self.observe_only,
                                 master_major=master.major if master else "", since=since,
                                 failovers=failovers, candidate=chosen,
                                 config_path=self.config.source_path or "FILE")
        for decision in made:
            self._record(decision)
            if self.observe_only or self.worker is not None:
                continue
            if decision.action == "reseed":
                self._start_reseed(decision)
            elif decision.action == "failover":
                self._start_failover(decision)
        self._publish(observation.as_dict(), made, pause is not None, now)

    # -- acting -----------------------------------------------------------------------

    def _takeovers(self, jobs: list[RunningJob], now: float) -> list[Decision]:
        """Jobs whose controller is gone: finish them by policy (one at a time)."""
        made: list[Decision] = []
        if self.worker is not None:
            return made  # our own job, or one at a time: the next poll looks again
        for job in jobs:
            if job.owner_alive:
                continue
            steps = {s.name: s.outcome for s in self.journal.steps(job.id)}
            outstanding = {e.step for e in self.journal.undo_entries(job.id)
                           if e.outstanding and e.step}
            full = self.journal.get_job(job.id)
            if full.state in (JobState.ROLLING_BACK, JobState.ROLLBACK_INCOMPLETE):
                action, why = "rollback", f"job {job.id} was rolling back: finishing it"
            elif module_for(job.kind) is not None:
                action, why = decisions.takeover_promotion(
                    job.id, passed_point_of_no_return=bool(full.info.get(PONR)),
                    attention=full.info.get("attention"))
            else:
                action, why = decisions.takeover(job.id, steps, outstanding)
            decision = Decision(action, job.target, [f"the controller of job {job.id} is gone",
                                                     why], now, donor=job.source, job=job.id,
                                observe_only=self.observe_only)
            made.append(decision)
            if action == "attention":
                continue
            if not self.observe_only and self.worker is None and self._still_leader():
                self.worker = worker.spawn(self.config.source_path, action, job=job.id,
                                           source=job.source, target=job.target)
        return made

    def _still_leader(self) -> bool:
        """Confirmed just before acting: a poll's decisions are only as fresh as its lease."""
        self.is_leader = self.store.campaign(self.id, self.config.agent.lease_ttl_s,
                                             self.clock())
        return self.is_leader

    def _start_reseed(self, decision: Decision) -> None:
        assert decision.target is not None and decision.donor is not None
        if not self._still_leader():
            log.warning("lost the leadership before re-seeding %s: not acting",
                        decision.target, extra={"event": "not-leader"})
            return
        self.worker = worker.spawn(self.config.source_path, "reseed", source=decision.donor,
                                   target=decision.target)
        self.worker.history_row = self.store.record_reseed(
            ReseedRecord(decision.target, decision.donor, None, self.worker.started))
        self.store.unmark(decision.target)  # an operator's mark is used up by this re-seed
        self.metrics.reseed_started()

    def _start_failover(self, decision: Decision) -> None:
        assert decision.target is not None
        if not self._still_leader():
            log.warning("lost the leadership before failing %s over: not acting",
                        decision.target, extra={"event": "not-leader"})
            return
        self.worker = worker.spawn(self.config.source_path, "failover",
                                   source=decision.target, target=decision.candidate)
        self.worker.history_row = self.store.record_failover(
            FailoverRecord(decision.target, decision.candidate, None, self.worker.started))

    def _job_of(self, running: worker.Worker) -> str | None:
        if running.job is not None:
            return running.job
        for job in self.journal.list_jobs(20):
            if running.action == "failover":
                if job.kind == "failover" and job.created >= running.started - 1:
                    running.job = job.id
                    return job.id
            elif (job.kind == "clone" and job.params.get("target") == running.target
                    and job.created >= running.started - 1):
                running.job = job.id
                return job.id
        return None

    def _reap(self) -> None:
        running = self.worker
        if running is None:
            return
        known = running.job
        job_id = self._job_of(running)
        failover = running.action == "failover"
        if running.alive:
            if job_id and known is None and running.history_row is not None:
                self._update_history(running, job_id, "started")
            return
        self.worker = None
        report = job_report(self.journal, job_id) if job_id else {"state": "failed"}
        state = str(report.get("state"))
        seconds = self.clock() - running.started
        if running.history_row is not None:
            self._update_history(running, job_id, state)
        if failover:
            self._down_since = None  # whoever is master now is seen afresh
        elif state in {str(s) for s in TERMINAL_STATES}:
            self.metrics.reseed_finished(report, seconds)
        else:
            # The worker died with the job unfinished: the next poll takes it over.
            log.warning("%s of %s: its process ended (exit %s) with job %s %s",
                        running.action, running.target, running.exit_code, job_id, state,
                        extra={"event": "worker-died", "job": job_id})
        if running.target:
            self.monitor.forget(running.target)
        log.info("%s of %s (job %s) ended %s after %.0fs", running.action, running.target,
                 job_id, state, seconds,
                 extra={"event": "job-finished", "action": running.action, "job": job_id,
                        "target": running.target, "state": state,
                        "exit_code": running.exit_code, "seconds": round(seconds, 3)})

    def _update_history(self, running: worker.Worker, job_id: str | None, state: str) -> None:
        assert running.history_row is not None
        if running.action != "failover":
            self.store.update_reseed(running.history_row, job=job_id, outcome=state)
            return
        promoted = self.journal.get_job(job_id).info.get("new_master") if job_id else None
        self.store.update_failover(running.history_row, job=job_id, outcome=state,
                                   promoted=promoted)

    # -- recording ---------------------------------------------------------------------

    def _record(self, decision: Decision) -> None:
        """A decision is recorded when it changes, not at every poll."""
        slot = (decision.action if decision.target is None else "replica", decision.target)
        if self._last.get(slot) == decision.key():
            return
        self._last[slot] = decision.key()
        body = decision.as_dict()
        body["agent"] = self.id
        self.store.record_decision(body)
        level = (logging.WARNING if decision.action in ("master-down", "no-donor", "failover",
                                                         "no-candidate", "attention")
                 else logging.INFO)
        log.log(level, "decision: %s %s%s: %s", decision.action, decision.target or "",
                 f" from {decision.donor}" if decision.donor else "", "; ".join(decision.reasons),
                 extra={"event": "decision", "decision": body})

    def _publish(self, observation: dict[str, Any], made: list[Decision], paused: bool,
                 now: float) -> None:
        running = None
        if self.worker is not None:
            running = {"action": self.worker.action, "source": self.worker.source,
                       "target": self.worker.target, "job": self.worker.job,
                       "started": self.worker.started, "pid": self.worker.process.pid}
        self.store.put_status({"at": now, "leader": self.id, "observation": observation,
                               "current_decisions": [d.as_dict() for d in made],
                               "worker": running, "paused": paused,
                               "observe_only": self.observe_only})
