"""kill -9 while usage moves: the migration to the bucket-major layout (0014 copies every point) and a
bulk load into it, on SQLite and PostgreSQL. A child process runs it and is SIGKILLed after a growing
delay until one run finishes; after every kill the database holds exactly the points of before (old
revision, old layout) or all of them moved (new revision): nothing lost, nothing doubled. A killed load (SQLite: while parsing, while ADBC writes its staging file,
while the merge runs) leaves at most a staging file, which the next load deletes."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from storage.db import alembic_config, current_revision, head_revision, make_engine, migrate
from storage.usage import load_usage, upsert_usage
from tests.storage.test_usage import T0, Rec, rows

DAY = 86_400


def _book(n_accounts: int, days: int, value: float = 0.0) -> list[list[Rec]]:
    return [[Rec(f"acct-{i:05d}", m, T0 + d * DAY, float(i % 97 + d) + value) for i in range(n_accounts)
             for m in ("calls", "gb")] for d in range(days)]


def _killed_until_done(work: Callable[[], None], check: Callable[[], None]) -> int:
    """Run `work` in forked children, killing each after a growing delay, until one finishes; `check`
    after every kill. Returns how many children were killed while running."""
    ctx = multiprocessing.get_context("fork")
    delay, kills = 0.02, 0
    while True:
        child = ctx.Process(target=work)
        child.start()
        child.join(delay)
        if not child.is_alive():
            assert child.exitcode == 0, child.exitcode
            return kills
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        kills += 1
        check()
        delay *= 1.6


def _downgraded(engine: Engine) -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0013_attention")


def _key(engine: Engine) -> list[str]:
    return sa.inspect(engine).get_pk_constraint("usage_points")["constrained_columns"]


def test_kill_9_during_the_migration_loses_or_doubles_nothing(engine: Engine, db_url: str) -> None:
    _downgraded(engine)
    load_usage(engine, _book(2500, 24))
    want = rows(engine)
    engine.dispose()

    def work() -> None:
        migrate(make_engine(db_url))

    def check() -> None:
        eng = make_engine(db_url)
        try:
            rev = current_revision(eng)
            assert rev in ("0013_attention", head_revision())
            assert _key(eng) == (["account_id", "metric", "bucket_start"] if rev == "0013_attention"
                                 else ["metric", "bucket_start", "account_id"])
            assert "usage_points_new" not in sa.inspect(eng).get_table_names()
            assert rows(eng) == want
        finally:
            eng.dispose()

    kills = _killed_until_done(work, check)
    check()
    assert current_revision(engine) == head_revision() and _key(engine)[0] == "metric"
    assert kills >= 2  # some kills landed while it ran (the copy takes a good part of a second or more)


def test_kill_9_during_a_load_stores_all_or_nothing(engine: Engine, db_url: str) -> None:
    load_usage(engine, _book(2000, 20))
    before = rows(engine)
    new_days = _book(2000, 24, value=0.5)[18:]  # two stored days replaced, four new ones appended
    engine.dispose()

    def work() -> None:
        load_usage(make_engine(db_url), new_days)

    expected: dict[tuple, float] = {(a, m, b): v for a, m, b, v in before}
    for chunk in new_days:
        for r in chunk:
            expected[(r.account, r.metric, r.ts)] = r.value
    after = sorted((*k, v) for k, v in expected.items())

    def check() -> None:
        eng = make_engine(db_url)
        try:
            assert rows(eng) in (before, after)
        finally:
            eng.dispose()

    kills = _killed_until_done(work, check)
    assert rows(engine) == after
    assert kills >= 1
    if engine.dialect.name == "sqlite":  # the killed loads' staging files (storage.usage_load) are gone
        db = engine.url.database
        assert [f for f in os.listdir(os.path.dirname(db)) if f.startswith(os.path.basename(db) + "-load-")] == []


def test_kill_9_during_a_new_days_delivery_stores_all_or_nothing(engine: Engine, db_url: str) -> None:
    """A new day for every account (every staged bucket after the stored ones: on PostgreSQL the
    append path, storage.usage_load._append, inserted without ON CONFLICT in a savepoint), killed
    at growing delays: the day and its bookkeeping are there in full or not at all."""
    load_usage(engine, _book(3000, 10))
    before = rows(engine)
    day = [r for chunk in _book(3000, 11, value=0.25)[10:] for r in chunk]
    engine.dispose()

    def work() -> None:
        upsert_usage(make_engine(db_url), day)

    after = sorted(before + [(r.account, r.metric, r.ts, r.value) for r in day])

    def snapshot(eng: Engine) -> tuple[list[tuple], tuple[int, ...]]:
        """The points and the bookkeeping read in ONE snapshot (a killed client's COMMIT may still
        land on the server while the check reads)."""
        level = "REPEATABLE READ" if eng.dialect.name == "postgresql" else "SERIALIZABLE"
        with eng.connect().execution_options(isolation_level=level) as c, c.begin():
            points = sorted(tuple(r) for r in c.execute(sa.text(
                "SELECT account_id, metric, bucket_start, value FROM usage_points")))
            side = tuple(int(c.execute(sa.text(q)).scalar_one()) for q in (
                "SELECT MAX(first_bucket) FROM usage_first_seen", "SELECT COUNT(*) FROM usage_coverage",
                "SELECT COUNT(*) FROM usage_changes"))
        return points, side

    first = snapshot(engine)[1]

    def check() -> None:
        eng = make_engine(db_url)
        try:
            now, side = snapshot(eng)
            assert now in (before, after)
            # the bookkeeping moved with the points: one more bucket per metric; the change log one row
            # per (metric, new bucket) for the delivery that stored the day, and one per pair for each
            # delivery after it (a child killed after its commit landed is followed by one that delivers
            # it again, into buckets no longer new)
            if now == before:
                assert side == first
            else:
                assert side[:2] == (first[0], first[1] + 2)
                again = side[2] - first[2] - 2
                assert again >= 0 and again % len(day) == 0
        finally:
            eng.dispose()

    kills = _killed_until_done(work, check)
    check()
    assert rows(engine) == after
    assert kills >= 1
