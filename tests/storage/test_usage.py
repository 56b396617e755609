"""Usage upserts and aggregated blocks, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import storage.usage as usage_mod
from rules.model import DAY
from storage.usage import in_chunks, load_block, load_blocks, load_usage, metrics, upsert_usage, usage_range

T0 = 1_792_800_000 - 1_792_800_000 % DAY  # a UTC midnight
H = 3600
NAN = np.nan


@dataclass(frozen=True)
class Rec:
    account: str
    metric: str
    ts: int | float
    value: float


def rows(engine: Engine) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(
            "SELECT account_id, metric, bucket_start, value FROM usage_points "
            "ORDER BY account_id, metric, bucket_start"))]


def test_upsert_floors_sums_and_is_idempotent(engine: Engine) -> None:
    recs = [
        Rec("a", "calls", T0 + 5, 1.0),
        Rec("a", "calls", T0 + 59, 2.0),  # same minute -> summed
        Rec("a", "calls", T0 + 60, 4.0),
        Rec("b", "calls", T0 + 61.9, 8.0),  # float ts floored
        Rec("a", "gb", T0 + 5, 0.5),
    ]
    assert upsert_usage(engine, recs) == 4
    expected = [
        ("a", "calls", T0, 3.0), ("a", "calls", T0 + 60, 4.0),
        ("a", "gb", T0, 0.5), ("b", "calls", T0 + 60, 8.0),
    ]
    assert rows(engine) == expected
    assert upsert_usage(engine, recs) == 4  # re-loading the same file changes nothing
    assert rows(engine) == expected
    # a later load of the same bucket replaces the value (not added)
    upsert_usage(engine, [Rec("a", "calls", T0 + 10, 7.0)])
    assert rows(engine)[0] == ("a", "calls", T0, 7.0)


def test_upsert_base_step_and_empty_input(engine: Engine) -> None:
    assert upsert_usage(engine, []) == 0
    n = upsert_usage(engine, [Rec("a", "m", T0 + 3599, 1.0), Rec("a", "m", T0 + 1, 2.0)], base_step=H)
    assert n == 1
    assert rows(engine) == [("a", "m", T0, 3.0)]


def test_upsert_rejects_bad_values_and_writes_nothing(engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"record #1 .*not a finite number"):
        upsert_usage(engine, [Rec("a", "m", T0, 1.0), Rec("a", "m", T0, float("nan"))])
    with pytest.raises(ValueError, match=r"record #0 .*ts must be epoch seconds"):
        upsert_usage(engine, [Rec("a", "m", "yesterday", 1.0)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base_step"):
        upsert_usage(engine, [Rec("a", "m", T0, 1.0)], base_step=0)
    assert rows(engine) == []


def test_upsert_many_chunks(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_mod, "UPSERT_CHUNK", 7)
    recs = [Rec(f"acct-{i % 5}", "calls", T0 + 60 * i, float(i)) for i in range(50)]
    assert upsert_usage(engine, recs) == 50
    assert len(rows(engine)) == 50
    assert sum(r[3] for r in rows(engine)) == sum(range(50))


def test_range_and_metrics(engine: Engine) -> None:
    assert usage_range(engine) is None
    assert metrics(engine) == []
    upsert_usage(engine, [Rec("a", "calls", T0 + 120, 1), Rec("b", "gb", T0, 1), Rec("b", "gb", T0 + DAY, 1)])
    assert usage_range(engine) == (T0, T0 + DAY)
    assert usage_range(engine, "calls") == (T0 + 120, T0 + 120)
    assert usage_range(engine, "nope") is None
    assert metrics(engine) == ["calls", "gb"]


def test_the_metrics_list_never_reads_the_points(engine: Engine) -> None:
    """`/usage` and the account page list the metrics on every answer: from the small coverage table,
    never by a DISTINCT over every point (11.9 s at 100k accounts, bench/bench_web.py)."""
    import sqlalchemy as sa

    upsert_usage(engine, [Rec("a", "calls", T0, 1), Rec("b", "gb", T0 + DAY, 2)])
    load_usage(engine, in_chunks([Rec("c", "seats", T0, 3)], 1))
    seen: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # noqa: ANN001 - SQLAlchemy's event signature
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert metrics(engine) == ["calls", "gb", "seats"]
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert seen and not any("usage_points" in q for q in seen)


def test_aggregates_minutes_to_hours_and_days(engine: Engine) -> None:
    rng = np.random.default_rng(3)
    minutes = 2 * 24 * 60
    vals = {a: rng.integers(0, 5, minutes).astype(float) for a in ("a", "b")}
    upsert_usage(engine, [Rec(a, "calls", T0 + 60 * i, v[i]) for a, v in vals.items() for i in range(minutes)])

    hourly = load_block(engine, "calls", H, T0, T0 + 2 * DAY)
    assert hourly.account_ids == ["a", "b"] and hourly.start == T0 and hourly.step == H
    assert hourly.values.shape == (2, 48)
    for i, a in enumerate(("a", "b")):
        np.testing.assert_allclose(hourly.values[i], vals[a].reshape(48, 60).sum(axis=1))

    daily = load_block(engine, "calls", DAY, T0, T0 + 2 * DAY)
    np.testing.assert_allclose(daily.values, [vals["a"].reshape(2, -1).sum(1), vals["b"].reshape(2, -1).sum(1)])

    # a window in the middle, 15-minute buckets
    q = load_block(engine, "calls", 900, T0 + H, T0 + 2 * H)
    np.testing.assert_allclose(q.values[0], vals["a"][60:120].reshape(4, 15).sum(axis=1))


def test_missing_data_rules(engine: Engine) -> None:
    # hours 0..5; "old" has history before the window, "new" starts at hour 3,
    # "quiet" has a point only in another metric. Hour 1 has no point for anybody.
    upsert_usage(engine, [
        Rec("old", "calls", T0 - DAY, 1.0),
        Rec("old", "calls", T0 + 0 * H + 60, 5.0),
        Rec("old", "calls", T0 + 2 * H, 0.0),  # an explicit zero is an observation
        Rec("new", "calls", T0 + 3 * H + 1800, 2.0),
        Rec("other", "calls", T0 + 4 * H, 9.0),
        Rec("quiet", "gb", T0 + 2 * H, 1.0),
    ])
    block = load_block(engine, "calls", H, T0, T0 + 6 * H, account_ids=["new", "old", "quiet"])
    assert block.account_ids == ["new", "old", "quiet"]
    np.testing.assert_array_equal(block.values, np.array([
        # h0   h1   h2   h3   h4   h5
        [NAN, NAN, NAN, 2.0, 0.0, NAN],  # new: not onboarded before h3; h5 observed by nobody
        [5.0, NAN, 0.0, 0.0, 0.0, NAN],  # old: 0 where others observed, NaN in unobserved h1/h5
        [NAN, NAN, NAN, NAN, NAN, NAN],  # quiet: never had this metric
    ]))
    # default rows: accounts with the metric in range, sorted; "other" makes h4 observed
    default = load_block(engine, "calls", H, T0, T0 + 6 * H)
    assert default.account_ids == ["new", "old", "other"]
    np.testing.assert_array_equal(default.values[2], [NAN, NAN, NAN, NAN, 9.0, NAN])


def test_observed_columns_use_the_whole_table(engine: Engine) -> None:
    upsert_usage(engine, [Rec("a", "calls", T0, 1.0), Rec("b", "calls", T0 + H, 3.0)])
    only_a = load_block(engine, "calls", H, T0, T0 + 2 * H, account_ids=["a"])
    np.testing.assert_array_equal(only_a.values, [[1.0, 0.0]])  # b's point makes hour 1 observed


def test_alignment_and_argument_errors(engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"load_block\('calls'\): start .* multiples of step 3600"):
        load_block(engine, "calls", H, T0 + 60, T0 + H)
    with pytest.raises(ValueError, match="multiples of step"):
        load_block(engine, "calls", H, T0, T0 + H + 1)
    with pytest.raises(ValueError, match="step must be positive"):
        load_block(engine, "calls", 0, T0, T0)
    with pytest.raises(ValueError, match="before start"):
        load_block(engine, "calls", H, T0 + H, T0)
    with pytest.raises(ValueError, match=r"duplicate account ids.*'a'"):
        load_block(engine, "calls", H, T0, T0 + H, account_ids=["a", "b", "a"])
    empty = load_block(engine, "calls", H, T0, T0 + 3 * H)
    assert empty.account_ids == [] and empty.values.shape == (0, 3)
    zero_width = load_block(engine, "calls", H, T0, T0, account_ids=["a"])
    assert zero_width.values.shape == (1, 0)


def test_chunked_loading_equals_whole(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    recs = []
    for k in range(23):
        first = int(rng.integers(0, 30))  # staggered onboarding
        recs += [Rec(f"acct-{k:02d}", "calls", T0 + H * h + 60 * int(rng.integers(0, 60)), float(rng.integers(1, 9)))
                 for h in range(first, 48) if rng.random() < 0.7]
    upsert_usage(engine, recs)
    whole = load_block(engine, "calls", H, T0, T0 + 2 * DAY)
    parts = list(load_blocks(engine, "calls", H, T0, T0 + 2 * DAY, chunk_accounts=5))
    assert [len(p.account_ids) for p in parts] == [5, 5, 5, 5, 3]
    assert sum((p.account_ids for p in parts), []) == whole.account_ids
    np.testing.assert_array_equal(np.vstack([p.values for p in parts]), whole.values)
    assert np.isnan(whole.values).any() and (whole.values == 0).any()

    ids = list(reversed(whole.account_ids))[:9] + ["missing"]
    given = load_block(engine, "calls", H, T0, T0 + 2 * DAY, account_ids=ids)
    parts = list(load_blocks(engine, "calls", H, T0, T0 + 2 * DAY, account_ids=ids, chunk_accounts=4))
    np.testing.assert_array_equal(np.vstack([p.values for p in parts]), given.values)
    assert np.isnan(given.values[-1]).all()
    # many requested ids: filtered in Python instead of SQL IN (...), same answer
    monkeypatch.setattr(usage_mod, "_IN_LIMIT", 3)
    np.testing.assert_array_equal(load_block(engine, "calls", H, T0, T0 + 2 * DAY, account_ids=ids).values,
                                  given.values)
    assert list(load_blocks(engine, "nothing", H, T0, T0 + H)) == []
    with pytest.raises(ValueError, match="chunk_accounts"):
        list(load_blocks(engine, "calls", H, T0, T0 + H, chunk_accounts=0))
