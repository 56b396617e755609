"""The fast read path (covering index + first-seen/coverage tables + numpy aggregation)
against a plain SQL reference, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage import usage as U
from storage.db import make_engine
from storage.usage import load_block, upsert_usage
from tests.storage.test_usage import Rec

T0 = 1_790_000_000 - 1_790_000_000 % 86_400


def reference_block(engine: Engine, metric: str, step: int, start: int, end: int, ids: list[str]) -> np.ndarray:
    """The missing-data rules straight from usage_points with GROUP BY / MIN (slow, obvious)."""
    n = (end - start) // step
    out = np.full((len(ids), n), np.nan)
    with engine.connect() as c:
        cols = {int(r[0]) for r in c.execute(sa.text(
            "SELECT DISTINCT (bucket_start / :s) * :s FROM usage_points WHERE metric = :m "
            "AND bucket_start >= :a AND bucket_start < :b"), {"s": step, "m": metric, "a": start, "b": end})}
        first = dict(c.execute(sa.text(
            "SELECT account_id, MIN(bucket_start) FROM usage_points WHERE metric = :m GROUP BY account_id"),
            {"m": metric}).all())
        sums = c.execute(sa.text(
            "SELECT account_id, (bucket_start / :s) * :s AS b, SUM(value) FROM usage_points WHERE metric = :m "
            "AND bucket_start >= :a AND bucket_start < :b GROUP BY account_id, (bucket_start / :s) * :s"),
            {"s": step, "m": metric, "a": start, "b": end}).all()
    for i, a in enumerate(ids):
        for j in range(n):
            b = start + j * step
            if b in cols and a in first and b + step > first[a]:
                out[i, j] = 0.0
    pos = {a: i for i, a in enumerate(ids)}
    for a, b, v in sums:
        if a in pos:
            out[pos[a], (int(b) - start) // step] = v
    return out


def _random_records(rng: np.random.Generator, n_acc: int, minutes: int) -> list[Rec]:
    recs = []
    for k in range(n_acc):
        onboard = int(rng.integers(0, minutes // 2))
        for t in range(onboard, minutes, int(rng.integers(1, 20))):
            if rng.random() < 0.6:
                recs.append(Rec(f"acct-{k:02d}", str(rng.choice(["calls", "events"])), T0 + t * 60 + int(rng.integers(0, 60)),
                                float(rng.integers(0, 50))))
    return recs


@pytest.mark.parametrize("cached", [True, False], ids=["tiles", "direct"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_read_path_matches_reference(engine, seed, cached):
    rng = np.random.default_rng(seed)
    recs = _random_records(rng, 12, 6 * 60)
    # two loads, the second overlapping the first: first-seen must keep the minimum
    upsert_usage(engine, recs[len(recs) // 2:])
    upsert_usage(engine, recs[: len(recs) // 2 + 10])
    for metric in ("calls", "events"):
        for step in (60, 300, 3600):
            start = T0 - step * 2
            end = T0 + 7 * 3600 - (T0 + 7 * 3600) % step
            got = load_block(engine, metric, step, start, end, cached=cached)
            want = reference_block(engine, metric, step, start, end, got.account_ids)
            np.testing.assert_array_equal(got.values, want)
            some = got.account_ids[::3][:4] + ["never-seen"]
            part = load_block(engine, metric, step, start, end, account_ids=some)
            np.testing.assert_array_equal(part.values, reference_block(engine, metric, step, start, end, some))
            assert np.isnan(part.values[-1]).all()


def test_long_account_lists_take_the_filtering_path(engine, monkeypatch):
    recs = [Rec(f"a{k}", "m", T0 + d * 86_400, float(k + d)) for k in range(30) for d in range(5)]
    upsert_usage(engine, recs)
    ids = [f"a{k}" for k in range(0, 30, 2)]
    short = load_block(engine, "m", 86_400, T0, T0 + 5 * 86_400, account_ids=ids)
    monkeypatch.setattr(U, "_IN_LIMIT", 3)
    long = load_block(engine, "m", 86_400, T0, T0 + 5 * 86_400, account_ids=ids)
    np.testing.assert_array_equal(short.values, long.values)
    assert short.values[1, 2] == 4.0  # account a2 (k=2) on day 2: k + d


def test_bookkeeping_tables_follow_upserts(engine):
    upsert_usage(engine, [Rec("a", "m", T0 + 600, 1.0), Rec("b", "m", T0 + 60, 2.0)])
    upsert_usage(engine, [Rec("a", "m", T0 + 120, 3.0), Rec("a", "m", T0 + 6000, 3.0)])
    with engine.connect() as c:
        first = dict(c.execute(sa.text("SELECT account_id, first_bucket FROM usage_first_seen")).all())
        cov = sorted(r[0] for r in c.execute(sa.text("SELECT bucket_start FROM usage_coverage WHERE metric='m'")))
    assert first == {"a": T0 + 120, "b": T0 + 60}
    assert cov == [T0 + 60, T0 + 120, T0 + 600, T0 + 6000]


def test_migration_backfills_existing_points(db_url):
    from alembic import command

    from storage.db import alembic_config

    eng = make_engine(db_url)
    try:
        cfg = alembic_config(eng)
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001_initial")
        with eng.begin() as c:
            c.execute(sa.text("INSERT INTO usage_points (account_id, metric, bucket_start, value) VALUES "
                              "('a', 'm', 120, 1), ('a', 'm', 60, 2), ('b', 'm', 180, 3), ('b', 'x', 60, 4)"))
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with eng.connect() as c:
            first = sorted(c.execute(sa.text("SELECT metric, account_id, first_bucket FROM usage_first_seen")).all())
            cov = sorted(c.execute(sa.text("SELECT metric, bucket_start FROM usage_coverage")).all())
        assert [tuple(r) for r in first] == [("m", "a", 60), ("m", "b", 180), ("x", "b", 60)]
        assert [tuple(r) for r in cov] == [("m", 60), ("m", 120), ("m", 180), ("x", 60)]
    finally:
        eng.dispose()


def test_chunk_id_ranges_follow_python_order_not_the_database_collation(engine, monkeypatch):
    # en_US-style collations sort "a-b" / "A" / "Ä" differently from Python's code-point order;
    # a chunk's id range must still cover exactly the ids Python put in it.
    names = ["Zeta", "alpha", "a-b", "a_b", "ab", "Äpfel", "b", "B-2", "ß", "a b"]
    if engine.dialect.name == "postgresql":  # the test cluster is C-locale: give the column a linguistic one
        with engine.begin() as c:
            if c.exec_driver_sql("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'").first() is None:
                pytest.skip("this PostgreSQL has no ICU collations")
            c.exec_driver_sql('ALTER TABLE usage_points ALTER COLUMN account_id TYPE varchar COLLATE "und-x-icu"')
            c.exec_driver_sql('ALTER TABLE usage_first_seen ALTER COLUMN account_id TYPE varchar '
                              'COLLATE "und-x-icu"')
    upsert_usage(engine, [Rec(n, "m", T0 + d * 86_400, float(i * 10 + d)) for i, n in enumerate(names)
                          for d in range(3)])
    whole = load_block(engine, "m", 86_400, T0, T0 + 3 * 86_400)
    assert whole.account_ids == sorted(names)
    if engine.dialect.name == "postgresql":
        with engine.connect() as c:
            db_order = [r[0] for r in c.exec_driver_sql(
                "SELECT DISTINCT account_id FROM usage_points ORDER BY account_id")]
        assert db_order != sorted(names)  # the database really orders them differently
    monkeypatch.setattr(U, "_IN_LIMIT", 1)  # every list below takes the id-range path
    for ids in (sorted(names)[:4], sorted(names)[3:8], sorted(names)[7:], sorted(names)[::3]):
        part = load_block(engine, "m", 86_400, T0, T0 + 3 * 86_400, account_ids=ids)
        rows = [whole.account_ids.index(a) for a in ids]
        np.testing.assert_array_equal(part.values, whole.values[rows])
