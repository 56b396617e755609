"""The APScheduler wiring: schedules under a frozen clock, job defaults, leader gating, errors, shutdown."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from freezegun import freeze_time
from sqlalchemy.engine import Engine

from bot.service.leader import LeaseLeader, SoleLeader
from bot.service.scheduler import LEADER_JOB, JobSpec, ServiceScheduler, cron, every
from storage.leases import get_lease


class Switch:
    """A leadership whose answer the test sets (a real object, not a mock)."""

    kind = "switch"
    holder = "test-replica"

    def __init__(self, leader: bool) -> None:
        self.leader = leader
        self.released = False

    @property
    def is_leader(self) -> bool:
        return self.leader

    def check(self, now: int) -> bool:
        return self.leader

    def release(self) -> None:
        self.released = True
        self.leader = False


def _wait(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


@freeze_time("2026-11-06 10:07:30")  # a Friday
def test_next_runs_and_job_defaults_under_a_frozen_clock() -> None:
    jobs = [JobSpec("poll:billing", lambda now: None, every(300), run_at_start=True),
            JobSpec("evaluate", lambda now: None, every(60)),
            JobSpec("crm_sync", lambda now: None, cron("0 9 * * 1-5"))]
    s = ServiceScheduler(jobs, SoleLeader(), misfire_grace=90)
    s.start(paused=True)
    try:
        runs = {j.id: j.next_run_time for j in s.scheduler.get_jobs()}
        now = datetime(2026, 11, 6, 10, 7, 30, tzinfo=UTC)
        assert runs[LEADER_JOB] == now and runs["poll:billing"] == now
        assert runs["evaluate"] == now + timedelta(seconds=60)
        assert runs["crm_sync"] == datetime(2026, 11, 9, 9, 0, tzinfo=UTC)  # Monday 09:00 UTC
        for j in s.scheduler.get_jobs():
            assert (j.coalesce, j.max_instances, j.misfire_grace_time) == (True, 1, 90)
        poll = s.scheduler.get_job("poll:billing")
        assert poll.trigger.get_next_fire_time(now, now) == now + timedelta(minutes=5)
    finally:
        s.shutdown(wait=False)


def test_jobs_get_the_injected_clock_and_only_the_leader_runs_them() -> None:
    seen: list[int] = []
    switch = Switch(leader=False)
    s = ServiceScheduler([JobSpec("evaluate", seen.append, every(60))], switch, clock=lambda: 1_800_000_000)
    spec = s.jobs[0]
    assert s.run_job(spec) == "skipped" and seen == []
    switch.leader = True
    assert s.run_job(spec) == "ok" and seen == [1_800_000_000]
    assert s.metrics.value("usagebot_job_runs_total", job="evaluate", result="skipped") == 1
    assert s.metrics.count("usagebot_job_seconds", job="evaluate") == 1
    follower_only = JobSpec("leader-free", seen.append, every(60), leader_only=False)
    switch.leader = False
    s2 = ServiceScheduler([follower_only], switch)
    assert s2.run_job(follower_only) == "ok"


def test_a_failing_job_is_counted_and_the_scheduler_keeps_running() -> None:
    calls: list[int] = []

    def flaky(now: int) -> None:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("first run fails")

    s = ServiceScheduler([JobSpec("flaky", flaky, every(0.05), run_at_start=True)], SoleLeader(),
                         leader_check=0.05)
    s.start()
    try:
        assert _wait(lambda: len(calls) >= 3)
    finally:
        s.shutdown()
    assert s.state["flaky"].errors == 1 and s.state["flaky"].last_error == "RuntimeError: first run fails"
    assert s.metrics.value("usagebot_errors_total", component="flaky") == 1


def test_coalesce_runs_a_backlog_once() -> None:
    runs: list[int] = []
    s = ServiceScheduler([JobSpec("tick", runs.append, every(0.1))], SoleLeader(), leader_check=10,
                         misfire_grace=60)
    s.start(paused=True)
    try:
        time.sleep(0.65)  # ~6 runs missed while paused
        s.scheduler.resume()
        assert _wait(lambda: len(runs) >= 1)
        time.sleep(0.05)
        assert len(runs) <= 2  # coalesced: one catch-up run (maybe the next regular one), not six
    finally:
        s.shutdown()


def test_a_new_leader_starts_its_jobs_at_once() -> None:
    runs: list[int] = []
    switch = Switch(leader=False)
    s = ServiceScheduler([JobSpec("poll:x", runs.append, every(3600), run_at_start=True)], switch, leader_check=0.05)
    s.start()
    try:
        time.sleep(0.2)
        assert runs == []  # its start-up run was skipped: not the leader
        switch.leader = True
        assert _wait(lambda: len(runs) == 1, 3)  # not an hour later
        assert s.metrics.value("usagebot_leader") == 1
    finally:
        s.shutdown()


def test_graceful_shutdown_waits_for_the_running_job_then_hands_over_the_lease(engine: Engine) -> None:
    started, finished = threading.Event(), threading.Event()

    def slow(now: int) -> None:
        started.set()
        time.sleep(0.4)
        finished.set()

    leader = LeaseLeader(engine, "graceful", ttl=60, holder="a")
    s = ServiceScheduler([JobSpec("slow", slow, every(3600), run_at_start=True)], leader, leader_check=0.05)
    s.start()
    assert started.wait(5)
    assert get_lease(engine, "graceful") is not None
    s.shutdown(wait=True)
    assert finished.is_set()  # the running job completed before shutdown returned
    assert get_lease(engine, "graceful") is None  # released: the next replica need not wait for the ttl
    assert LeaseLeader(engine, "graceful", ttl=60, holder="b").check(int(time.time()))
