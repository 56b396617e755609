"""Leader election and failover: one leader among replicas; leadership moves when the leader dies."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.service.leader import AdvisoryLockLeader, LeaseLeader, lock_key, make_leadership
from bot.service.scheduler import JobSpec, ServiceScheduler, every
from storage.leases import get_lease, lease_table
from tests.dbs import migrated_engine
from tests.pg import PgServer


@pytest.fixture
def pg_engine(pg_server: PgServer) -> Iterator[Engine]:
    url = pg_server.fresh_schema("leader")
    try:
        with migrated_engine(url) as eng:
            yield eng
    finally:
        pg_server.drop_schema(url)


def _terminate(pg_server: PgServer, pid: int) -> None:
    with psycopg.connect(host="127.0.0.1", port=pg_server.port, user="postgres", dbname="postgres",
                         autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def _wait(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def test_lease_is_renewed_taken_over_after_ttl_and_released(engine: Engine) -> None:
    a = LeaseLeader(engine, "svc", ttl=30, holder="a")
    b = LeaseLeader(engine, "svc", ttl=30, holder="b")
    assert a.check(1000) and not b.check(1000)
    assert a.check(1010)  # renewed: expires at 1040
    assert not b.check(1035)
    # a dies (stops renewing): b takes over once the lease has expired
    assert b.check(1041) and b.is_leader
    assert not a.check(1042) and not a.is_leader
    lease = get_lease(engine, "svc")
    assert lease is not None and (lease.holder, lease.acquired_at, lease.expires_at) == ("b", 1041, 1071)
    b.release()
    assert a.check(1043)  # graceful hand-over: no waiting for the ttl


def test_deleting_the_leaders_lease_moves_leadership(engine: Engine) -> None:
    a = LeaseLeader(engine, "svc", ttl=30, holder="a")
    b = LeaseLeader(engine, "svc", ttl=30, holder="b")
    assert a.check(100) and not b.check(101)
    with engine.begin() as conn:
        conn.execute(sa.delete(lease_table))
    assert b.check(102)
    assert not a.check(103)


def test_make_leadership_picks_the_lock_for_the_database(engine: Engine) -> None:
    kind = make_leadership("auto", engine, "svc", 30)
    try:
        assert kind.kind == ("advisory_lock" if engine.dialect.name == "postgresql" else "lease")
    finally:
        kind.release()
    assert make_leadership("none", engine, "svc", 30).check(0)
    assert lock_key("svc") == lock_key("svc") != lock_key("other")


@pytest.mark.postgresql
def test_advisory_lock_moves_when_the_leaders_connection_dies(pg_engine: Engine, pg_server: PgServer) -> None:
    a = AdvisoryLockLeader(pg_engine, "adv-test", holder="a")
    b = AdvisoryLockLeader(pg_engine, "adv-test", holder="b")
    try:
        assert a.check(0) and not b.check(0)
        assert a.check(1) and not b.check(1)  # checking again keeps it (no re-entrant pile-up)
        pid = a.backend_pid()
        assert pid is not None
        _terminate(pg_server, pid)  # the leader's connection is killed (crash, network cut)
        assert _wait(lambda: b.check(2), 3)
        assert not a.check(3) and not a.is_leader  # a notices, and cannot take it back
        b.release()
        assert a.check(4)  # graceful release: the lock is free at once
    finally:
        a.release()
        b.release()


@pytest.mark.postgresql
def test_two_schedulers_on_one_postgresql_fail_over(pg_engine: Engine, pg_server: PgServer) -> None:
    runs: list[str] = []
    lock = threading.Lock()

    def job_of(name: str):  # type: ignore[no-untyped-def]
        def job(now: int) -> None:
            with lock:
                runs.append(name)
        return job

    replicas = {name: AdvisoryLockLeader(pg_engine, "failover-test", holder=name) for name in ("r1", "r2")}
    scheds = {name: ServiceScheduler([JobSpec("tick", job_of(name), every(0.05), run_at_start=True)],
                                     leadership, leader_check=0.1)
              for name, leadership in replicas.items()}
    for s in scheds.values():
        s.start()
    try:
        assert _wait(lambda: len(runs) >= 3)
        first = runs[0]
        other = "r2" if first == "r1" else "r1"
        with lock:
            assert set(runs) == {first}  # only the leader runs jobs
            runs.clear()
        assert not scheds[other].is_leader and scheds[first].is_leader
        pid = replicas[first].backend_pid()
        assert pid is not None
        _terminate(pg_server, pid)  # the leader "dies"
        assert _wait(lambda: other in runs, 5)
        assert _wait(lambda: not scheds[first].is_leader, 3)
        with lock:
            runs.clear()
        time.sleep(0.4)
        with lock:
            assert runs and set(runs) == {other}  # the old leader no longer runs jobs
    finally:
        for s in scheds.values():
            s.shutdown()


def test_lease_failover_with_running_schedulers(engine: Engine) -> None:
    runs: list[str] = []
    scheds = {}
    for name in ("r1", "r2"):
        scheds[name] = ServiceScheduler(
            [JobSpec("tick", lambda now, n=name: runs.append(n), every(0.05), run_at_start=True)],
            LeaseLeader(engine, "lease-failover", ttl=2, holder=name), leader_check=0.1)
        scheds[name].start()
    try:
        assert _wait(lambda: len(runs) >= 2)
        first = runs[0]
        other = "r2" if first == "r1" else "r1"
        # the leader dies without releasing: its scheduler stops, the lease row stays until it expires
        scheds[first].scheduler.shutdown(wait=True)
        runs.clear()
        assert _wait(lambda: other in runs, 5)
        assert set(runs) == {other}
    finally:
        for s in scheds.values():
            s.shutdown(wait=True)
