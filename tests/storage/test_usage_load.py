"""load_usage(): one-transaction bulk loads, on SQLite and PostgreSQL.

It must mean exactly what ONE upsert_usage() call over all the chunks means (floor, sum across
the whole load, replace stored values, idempotent), keep the first-seen and coverage tables as the row-by-row path does, leave the bucket-major layout
(0014) as it was, and store nothing when the load fails part-way.
"""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage.db import make_engine, migrate
from storage.usage import load_usage, upsert_usage
from tests.storage.test_usage import T0, Rec, rows


def side_tables(engine: Engine) -> tuple[list[tuple], list[tuple]]:
    with engine.connect() as c:
        first = [tuple(r) for r in c.execute(sa.text(
            "SELECT metric, account_id, first_bucket FROM usage_first_seen ORDER BY 1, 2"))]
        cov = [tuple(r) for r in c.execute(sa.text("SELECT metric, bucket_start FROM usage_coverage ORDER BY 1, 2"))]
    return first, cov


def random_records(seed: int, n: int = 3000) -> list[Rec]:
    rng = np.random.default_rng(seed)
    return [Rec(f"acct-{int(rng.integers(0, 40)):02d}", str(rng.choice(["calls", "gb"])),
                T0 + int(rng.integers(0, 3 * 86_400)), float(rng.integers(0, 100)))
            for _ in range(n)]


def chunks(recs: list[Rec], size: int) -> list[list[Rec]]:
    return [recs[i:i + size] for i in range(0, len(recs), size)]


def twin(engine: Engine, tmp_path, name: str) -> Engine:
    """A second, independent database of the same kind (SQLite file) to compare against."""
    if engine.dialect.name != "sqlite":
        return None  # type: ignore[return-value]
    other = make_engine(f"sqlite:///{tmp_path / name}")
    migrate(other)
    return other


def layout_intact(engine: Engine) -> bool:
    """usage_points is keyed (metric, bucket_start, account_id) and has no other index (0014): a load
    (empty table or not, failed or not) leaves that layout as it was."""
    insp = sa.inspect(engine)
    key = insp.get_pk_constraint("usage_points")["constrained_columns"]
    return key == ["metric", "bucket_start", "account_id"] and not insp.get_indexes("usage_points")


def test_empty_table_load_equals_one_upsert_call_and_sums_across_chunks(engine: Engine, tmp_path) -> None:
    recs = random_records(1)
    # many duplicates of one key fall in different chunks: they must add up, not replace
    recs += [Rec("acct-dup", "calls", T0 + 5 + i, 1.0) for i in range(25)]
    n = load_usage(engine, chunks(recs, 97))
    assert layout_intact(engine)
    stored = rows(engine)
    assert n == len(stored)
    assert ("acct-dup", "calls", T0, 25.0) in stored
    reference = twin(engine, tmp_path, "ref.db")
    if reference is not None:
        try:
            upsert_usage(reference, recs)
            assert stored == rows(reference)
            assert side_tables(engine) == side_tables(reference)
        finally:
            reference.dispose()
    else:  # PostgreSQL: compare with sums computed here
        expected: dict[tuple, float] = {}
        for r in recs:
            key = (r.account, r.metric, r.ts - r.ts % 60)
            expected[key] = expected.get(key, 0.0) + r.value
        assert stored == sorted((*k, v) for k, v in expected.items())


def test_load_into_existing_data_replaces_sums_and_is_idempotent(engine: Engine, tmp_path) -> None:
    upsert_usage(engine, [Rec("acct-00", "calls", T0, 500.0), Rec("old", "calls", T0 - 86_400, 1.0)])
    recs = random_records(2) + [Rec("acct-00", "calls", T0 + 1, 2.0), Rec("acct-00", "calls", T0 + 2, 3.0)]
    # acct-00/calls/T0 had 500 stored: the load's own records replace it (their sum), never add to it
    load_sums: dict[tuple, float] = {}
    for r in recs:
        key = (r.account, r.metric, r.ts - r.ts % 60)
        load_sums[key] = load_sums.get(key, 0.0) + r.value
    want = {("old", "calls", T0 - 86_400): 1.0, **load_sums}
    n = load_usage(engine, chunks(recs, 101))
    assert n == len(load_sums)
    assert rows(engine) == sorted((*k, v) for k, v in want.items())
    assert layout_intact(engine)
    first, cov = side_tables(engine)
    assert ("calls", "old", T0 - 86_400) in first and ("calls", T0 - 86_400) in cov
    assert len(first) == len({(k[1], k[0]) for k in want}) and len(cov) == len({(k[1], k[2]) for k in want})
    # the same load again writes nothing and changes nothing
    before = rows(engine)
    assert load_usage(engine, chunks(recs, 101)) == 0
    assert rows(engine) == before


def test_failure_mid_load_stores_nothing_and_keeps_the_layout(engine: Engine) -> None:
    def failing():
        yield [Rec("a", "calls", T0, 1.0)]
        raise ValueError("bad row in usage.csv line 7")

    with pytest.raises(ValueError, match="line 7"):
        load_usage(engine, failing())
    assert rows(engine) == [] and side_tables(engine) == ([], [])
    assert layout_intact(engine)
    upsert_usage(engine, [Rec("b", "calls", T0, 9.0)])
    with pytest.raises(ValueError, match="line 7"):
        load_usage(engine, failing())
    assert rows(engine) == [("b", "calls", T0, 9.0)]
    with pytest.raises(ValueError, match=r"record #0 .*not a finite number"):
        load_usage(engine, [[Rec("c", "calls", T0, float("inf"))]])
    assert rows(engine) == [("b", "calls", T0, 9.0)] and layout_intact(engine)


def test_empty_load_and_bad_base_step(engine: Engine) -> None:
    assert load_usage(engine, []) == 0
    assert load_usage(engine, [[], []]) == 0
    assert layout_intact(engine)
    with pytest.raises(ValueError, match="base_step"):
        load_usage(engine, [[Rec("a", "m", T0, 1.0)]], base_step=0)


def test_in_chunks_splits_one_iterator() -> None:
    from storage.usage import in_chunks

    assert list(in_chunks(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(in_chunks([], 3)) == []
    with pytest.raises(ValueError, match="chunk size"):
        list(in_chunks([1], 0))


def test_two_loads_at_once_do_not_both_take_the_empty_path(engine: Engine) -> None:
    import threading
    import time

    recs = random_records(3, n=400)

    def slow_chunks():
        for c in chunks(recs, 50):
            time.sleep(0.02)  # a window in which a second load could see the table still empty
            yield c

    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_usage(engine, slow_chunks())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    expected: dict[tuple, float] = {}
    for r in recs:
        key = (r.account, r.metric, r.ts - r.ts % 60)
        expected[key] = expected.get(key, 0.0) + r.value
    assert rows(engine) == sorted((*k, v) for k, v in expected.items())  # loaded once, not added twice
    assert layout_intact(engine)
