"""APScheduler 3 jobs of the service, run only on the leader replica.

Every job is a plain function of `now` (int epoch seconds, from the injected
clock) wrapped so that
- it runs only while this replica is the leader (the `leader` job itself,
  which checks / renews leadership, runs on every replica);
- a failure is logged with its traceback and counted
  (usagebot_errors_total{component=<job>}), never stopping the scheduler;
- its duration and result are recorded (usagebot_job_seconds, _runs_total).

Job defaults: coalesce=True (a backlog of missed runs runs once),
max_instances=1 (a slow poll never overlaps itself), misfire_grace_time
(a run later than this after its time is skipped, the next one is normal).
`shutdown()` stops scheduling, waits for running jobs, then gives up
leadership so another replica takes over at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.crontab import cron_trigger
from bot.leader import Leadership
from bot.metrics import Metrics
from rules.config.redaction import mask

log = logging.getLogger(__name__)

LEADER_JOB = "leader"


def every(seconds: float) -> IntervalTrigger:
    return IntervalTrigger(seconds=seconds, timezone=UTC)


def cron(expr: str) -> BaseTrigger:
    """A crontab expression (UTC, crontab weekday numbers: 0/7 = Sunday)."""
    return cron_trigger(expr)


@dataclass(frozen=True)
class JobSpec:
    id: str
    func: Callable[[int], Any]
    trigger: BaseTrigger
    leader_only: bool = True
    run_at_start: bool = False  # first run right after start (else at the trigger's first time)


@dataclass
class JobState:
    runs: int = 0
    errors: int = 0
    skipped: int = 0
    last_started: float | None = None
    last_finished: float | None = None
    last_error: str | None = None


@dataclass
class ServiceScheduler:
    jobs: Sequence[JobSpec]
    leadership: Leadership
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], int] = lambda: int(time.time())
    leader_check: float = 5.0
    misfire_grace: int = 60
    max_workers: int = 4

    def __post_init__(self) -> None:
        self.state: dict[str, JobState] = {j.id: JobState() for j in self.jobs}
        self._stopping = threading.Event()
        self._was_leader = False
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(self.max_workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": self.misfire_grace},
        )
        self.scheduler.add_job(self.check_leadership, every(self.leader_check), id=LEADER_JOB,
                               name="leader election", next_run_time=datetime.now(UTC))
        for spec in self.jobs:
            kwargs: dict[str, Any] = {}
            if spec.run_at_start:
                kwargs["next_run_time"] = datetime.now(UTC)
            self.scheduler.add_job(self.run_job, spec.trigger, args=[spec], id=spec.id, name=spec.id, **kwargs)
        self.metrics.set("usagebot_leader", 0)

    @property
    def is_leader(self) -> bool:
        return self.leadership.is_leader

    def check_leadership(self) -> bool:
        was = self._was_leader
        if self._stopping.is_set():
            return was
        try:
            now = self.leadership.check(self.clock())
        except Exception:  # never let the election job die
            log.exception("leader check failed", extra={"event": "leader_check_failed"})
            self.metrics.inc("usagebot_errors_total", component=LEADER_JOB)
            now = False
        self._was_leader = now
        if now != was:
            self.metrics.set("usagebot_leader", 1 if now else 0)
            log.info("%s leadership (%s)", "took" if now else "lost", self.leadership.kind,
                     extra={"event": "leader_elected" if now else "leader_lost", "holder": self.leadership.holder})
            if now and self.scheduler.running:
                self._run_soon()
        return now

    def _run_soon(self) -> None:
        """A new leader starts the jobs now instead of waiting a whole interval."""
        at = datetime.now(UTC)
        for spec in self.jobs:
            st = self.state[spec.id]
            if st.runs == 0 and st.skipped == 0:
                continue  # its start-up run is still to come
            if spec.leader_only and spec.run_at_start:
                job = self.scheduler.get_job(spec.id)
                if job is not None:
                    job.modify(next_run_time=at)

    def run_job(self, spec: JobSpec) -> str:
        """Run one job now (if this replica may); returns "ok", "error" or "skipped"."""
        st = self.state[spec.id]
        if self._stopping.is_set() or (spec.leader_only and not self.leadership.is_leader):
            st.skipped += 1
            self.metrics.inc("usagebot_job_runs_total", job=spec.id, result="skipped")
            return "skipped"
        started = time.perf_counter()
        st.last_started = time.time()
        result = "ok"
        try:
            spec.func(self.clock())
        except Exception as exc:
            result = "error"
            st.errors += 1
            st.last_error = mask(f"{type(exc).__name__}: {exc}")
            self.metrics.inc("usagebot_errors_total", component=spec.id)
            log.exception("job %s failed", spec.id, extra={"event": "job_failed", "job": spec.id})
        st.runs += 1
        st.last_finished = time.time()
        self.metrics.observe("usagebot_job_seconds", time.perf_counter() - started, job=spec.id)
        self.metrics.inc("usagebot_job_runs_total", job=spec.id, result=result)
        return result

    def run_all_once(self) -> dict[str, str]:
        """Check leadership, then run every job once in order (`usagebot serve --once`)."""
        self.check_leadership()
        return {spec.id: self.run_job(spec) for spec in self.jobs}

    def start(self, paused: bool = False) -> None:
        self.scheduler.start(paused=paused)

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling, wait for running jobs (when `wait`), then give up leadership."""
        self._stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
        try:
            self.leadership.release()
        finally:
            self.metrics.set("usagebot_leader", 0)
