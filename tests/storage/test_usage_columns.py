"""storage.usage_columns (the backtest's in-memory points) against the database path it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from integrations.sources.records import UsageRecord
from rules.model import DAY
from storage.usage import UsageValueError, load_block, load_usage, usage_range
from storage.usage_columns import UsagePoints

T0 = 1_790_000_000 - 1_790_000_000 % DAY


def _records(seed: int) -> list[UsageRecord]:
    """Accounts onboarded at different times, gaps, several records per minute and per bucket,
    fractional values (summation order matters), zeros, two metrics."""
    rng = np.random.default_rng(seed)
    out = []
    for a in range(12):
        onboard = int(rng.integers(0, 10)) * DAY
        for metric in ("api_calls", "seats"):
            for _ in range(int(rng.integers(0, 120))):
                ts = T0 + onboard + int(rng.integers(0, 20 * DAY))
                value = float(rng.choice([0.0, 0.1, 0.7, 1e-3, 3.0, 12345.678]))
                out.append(UsageRecord(f"acct-{a:02d}" if a % 3 else f"Z{a}", metric, ts, value))
                if rng.random() < 0.2:  # a second record in the same minute
                    out.append(UsageRecord(out[-1].account, metric, ts + 1, 0.1))
    rng.shuffle(out)  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("step", "lo", "hi"), [(DAY, -3, 25), (3600, 2, 9), (DAY, 5, 12)])
def test_blocks_equal_load_block_of_the_same_records(engine, seed, step, lo, hi):
    records = _records(seed)
    load_usage(engine, [records])
    points = UsagePoints()
    for i in range(0, len(records), 97):  # in chunks, as the backtest reads a CSV
        points.add(records[i:i + 97])
    points.freeze()
    assert points.time_range() == usage_range(engine)
    assert points.accounts() == len({r.account for r in records})
    for metric in ("api_calls", "seats", "nothing"):
        want = load_block(engine, metric, step, T0 + lo * DAY, T0 + hi * DAY, cached=False)
        got = points.block(metric, step, T0 + lo * DAY, T0 + hi * DAY)
        assert got.account_ids == want.account_ids and got.start == want.start and got.step == want.step
        # NaN where NaN; sums equal to the last bits: a load sums a bucket's records in the database
        # (SUM over the staging table, in its own order), the columns in the records' order
        np.testing.assert_allclose(got.values, want.values, rtol=1e-13, atol=0, equal_nan=True)


def test_a_bucket_total_that_overflows_names_the_bucket():
    points = UsagePoints()
    points.add([UsageRecord("acme", "api_calls", T0 + 5, 1e308), UsageRecord("acme", "api_calls", T0 + 10, 1e308)])
    with pytest.raises(UsageValueError, match="usage records: account 'acme', metric 'api_calls', bucket"):
        points.freeze()


@pytest.mark.parametrize("seed", [1, 2])
def test_columnar_chunks_give_the_blocks_of_the_same_records(tmp_path, seed):
    """The backtest adds the columnar CSV reader's chunks (UsageColumns): the blocks are bit-equal
    to those of the same rows added as records (codes, record order and sums alike)."""
    from integrations.sources.csv_rows import iter_usage_csv_columns, write_usage_csv

    records = _records(seed)
    path = tmp_path / "usage.csv"
    write_usage_csv(path, records)
    rows, cols = UsagePoints(), UsagePoints()
    rows.add(records)
    chunks = list(iter_usage_csv_columns(path))
    assert chunks and all(not isinstance(c.records, list) for c in chunks)  # the columnar path was taken
    for c in chunks:
        cols.add(c.records)
    rows.freeze()
    cols.freeze()
    assert cols.records == rows.records == len(records)
    assert cols.account_ids == rows.account_ids and cols.metrics == rows.metrics
    for metric in ("api_calls", "seats"):
        want = rows.block(metric, DAY, T0 - 3 * DAY, T0 + 25 * DAY)
        got = cols.block(metric, DAY, T0 - 3 * DAY, T0 + 25 * DAY)
        assert got.account_ids == want.account_ids
        np.testing.assert_array_equal(got.values, want.values)


@pytest.mark.parametrize("seed", [4, 5])
def test_freeze_sums_each_bucket_in_record_order_bit_for_bit(seed):
    """freeze sorts by one composite key (not lexsort): the points come out sorted by (metric,
    account, bucket) and each minute's total is the records added in record order, to the last bit."""
    records = _records(seed)
    points = UsagePoints()
    points.add(records)
    points.freeze()
    want: dict[tuple[str, str, int], float] = {}
    for r in records:
        k = (r.metric, r.account, int(r.ts) - int(r.ts) % 60)
        want[k] = want.get(k, 0.0) + r.value
    got = {(points.metrics[m], points.account_ids[a], b): v for m, a, b, v in
           zip(points.metric.tolist(), points.account.tolist(), points.bucket.tolist(), points.value.tolist(),
               strict=True)}
    assert got == want  # exact float equality
    order = list(zip(points.metric.tolist(), points.account.tolist(), points.bucket.tolist(), strict=True))
    assert order == sorted(order) and len(set(order)) == len(order)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("bucket_major", [False, True])
def test_metric_facts_are_those_of_the_records(seed, bucket_major):
    """Per metric: the accounts with a point, the first and last minute bucket, the smallest gap
    between distinct buckets; and the accounts with usage (what rules.lint reads)."""
    records = _records(seed) + [UsageRecord("lone", "once", T0 + 5 * DAY + 7, 1.0)]
    points = UsagePoints()
    points.add(records)
    points.freeze(bucket_major=bucket_major)
    facts, with_usage = points.metric_facts()
    assert with_usage == {r.account for r in records}
    assert points.accounts() == len(with_usage)
    assert set(facts) == {"api_calls", "seats", "once"}
    for metric, got in facts.items():
        mine = [r for r in records if r.metric == metric]
        stamps = sorted({r.ts - r.ts % 60 for r in mine})
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        assert (got.accounts, got.first, got.last, got.resolution) == (
            len({r.account for r in mine}), stamps[0], stamps[-1], min(gaps) if gaps else None)
