"""Usage points held as numpy columns in memory: what `usagebot backtest` replays from.

A backtest used to load its CSV into a throwaway SQLite database and read the blocks back (30% of its
time, and every parsed record alive for the whole replay, ~500 B a row). `UsagePoints` keeps the same
points as four columns (~24 B a point): records are added chunk by chunk (each chunk can be dropped
once added), then summed per (account, metric, 60 s bucket) exactly as `storage.usage_values.sum_records`
sums them (in record order, so the totals are bit for bit the stored ones), and `block()` builds a
MetricBlock with the missing-data rules of `storage.usage.load_block`:

- rows: every account with a point of the metric in [start, end), sorted;
- a cell is the sum of the account's points in the bucket; a cell without a point is 0.0 when some
  account has a point of the metric in that bucket (the bucket was delivered) and the account had a
  point of the metric before (onboarded), NaN otherwise (not observed).

tests/storage/test_usage_columns.py checks blocks against load_block of the same records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from rules.lint import MetricFacts
from rules.model import MetricBlock
from storage.columnar import arrow_ints, arrow_strings
from storage.usage_values import UsageColumns, UsageRecordLike, UsageValueError, overflow_error

BASE_STEP = 60  # the stored buckets (storage.usage's base_step)


@dataclass
class UsagePoints:
    """Points (account, metric, bucket, value) as columns; `add` chunks, then `freeze` once."""

    account_ids: list[str] = field(default_factory=list)  # after freeze: code -> id (sorted)
    _acc_code: dict[str, int] = field(default_factory=dict)
    _met_code: dict[str, int] = field(default_factory=dict)
    _parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    # after freeze: one point per (account, metric, bucket), sorted by (metric, account, bucket)
    account: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    metric: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    bucket: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    value: np.ndarray = field(default_factory=lambda: np.zeros(0))
    records: int = 0
    base_step: int = BASE_STEP  # ts floored to this many seconds
    bucket_major: bool = False  # after freeze(bucket_major=True): sorted by (metric, bucket, account)

    @property
    def metrics(self) -> list[str]:
        """code -> metric."""
        return list(self._met_code)

    def add(self, records: Iterable[UsageRecordLike] | UsageColumns) -> None:
        """Add records or a columnar chunk (ts floored to the minute; invalid values raise UsageValueError)."""
        if isinstance(records, UsageColumns):
            self._add_columns(records)
            return
        rows = records if isinstance(records, list) else list(records)
        if not rows:
            return
        ts = np.fromiter((int(r.ts) for r in rows), dtype=np.int64, count=len(rows))
        values = np.fromiter((float(r.value) for r in rows), dtype=np.float64, count=len(rows))
        if not np.isfinite(values).all():
            i = int(np.flatnonzero(~np.isfinite(values))[0])
            raise UsageValueError(f"usage record #{self.records + i}: value {values[i]} is not a finite number")
        self.add_ids([r.account for r in rows], [r.metric for r in rows], ts, values)

    def add_ids(self, accounts: list[str], metrics: list[str], ts: np.ndarray, values: np.ndarray) -> None:
        """Rows given as lists of ids (accounts, metrics: str, else TypeError) and numpy columns (ts int64
        epoch seconds, values finite float64, the same length)."""
        self._parts.append((_codes(accounts, self._acc_code), _codes(metrics, self._met_code),
                            ts - ts % self.base_step, values))
        self.records += len(values)

    def _add_columns(self, chunk: UsageColumns) -> None:
        """A chunk of the columnar CSV reader (values already checked finite): each distinct account
        and metric is coded once, the rows never become Python objects."""
        if not len(chunk):
            return
        import pyarrow.compute as pc

        cols = []
        for arr, codes in ((chunk.accounts, self._acc_code), (chunk.metrics, self._met_code)):
            enc = pc.dictionary_encode(arr)
            lookup = np.asarray([codes.setdefault(x, len(codes)) for x in enc.dictionary.to_pylist()],
                                dtype=np.int32)
            cols.append(lookup[arrow_ints(enc.indices)])  # not to_numpy: that imports pandas
        ts = np.asarray(chunk.ts, dtype=np.int64)
        self._parts.append((cols[0], cols[1], ts - ts % self.base_step, np.asarray(chunk.values, dtype=np.float64)))
        self.records += len(chunk)

    def freeze(self, bucket_major: bool = False) -> None:
        """Sum the points of each (account, metric, bucket) in record order (storage.usage_values.sum_records);
        a total that overflows raises UsageValueError naming the bucket. Sorted by (metric, account,
        bucket); bucket_major: by (metric, bucket, account), usage_points' key order (for a bulk load:
        block() then refuses)."""
        if not self._parts:
            return
        # column by column, each part's column dropped once copied (peak memory: ~one extra column)
        cols = []
        for k in range(4):
            cols.append(np.concatenate([p[k] for p in self._parts]))
            self._parts = [tuple(None if c == k else x for c, x in enumerate(p)) for p in self._parts]  # type: ignore[misc]
        self._parts.clear()
        a, m, b, v = cols
        del cols
        # rank accounts by id so that sorting by code sorts by id (blocks list rows in id order); the
        # code map is not rebuilt (a frozen UsagePoints takes no more records: 100k ids, ~70 ms)
        ids = list(self._acc_code)
        order = _id_order(ids)
        rank = np.empty(len(order), dtype=np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        self.account_ids = [ids[i] for i in order.tolist()]
        a = rank[a]
        if bucket_major:  # metrics ranked by name too: the rows then follow usage_points' key order
            names = list(self._met_code)
            by_name = sorted(range(len(names)), key=names.__getitem__)
            m_rank = np.empty(len(names), dtype=np.int32)
            m_rank[np.asarray(by_name, dtype=np.int64)] = np.arange(len(names), dtype=np.int32)
            self._met_code = {names[i]: k for k, i in enumerate(by_name)}
            m = m_rank[m]
        idx = _sort_order(a, m, b, len(ids), self.base_step, bucket_major)
        self.bucket_major = bucket_major
        a = a[idx]  # one column at a time: the unsorted one is freed before the next is sorted
        m = m[idx]
        b = b[idx]
        v = v[idx]
        del idx
        new = np.ones(len(a), dtype=bool)
        new[1:] = (a[1:] != a[:-1]) | (m[1:] != m[:-1]) | (b[1:] != b[:-1])
        group = np.cumsum(new) - 1
        # bincount adds the weights one by one in input order: 0.0 + v1 + v2 ..., as sum_records does
        with np.errstate(over="ignore", invalid="ignore"):
            sums = np.bincount(group, weights=v)
        del group, v
        first = np.flatnonzero(new)
        self.account, self.metric, self.bucket, self.value = a[first], m[first], b[first], sums
        bad = ~np.isfinite(sums)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise overflow_error("usage records", self.account_ids[int(self.account[i])],
                                 self.metrics[int(self.metric[i])], int(self.bucket[i]))

    # ------------------------------------------------------------------ reads (after freeze)

    def __len__(self) -> int:
        return len(self.value)

    def accounts(self) -> int:
        """Accounts with at least one point."""
        return int(self._accounts_present(self.account).sum())

    def _accounts_present(self, codes: np.ndarray) -> np.ndarray:
        """Per account code, whether `codes` holds it (a bitmap, not np.unique of every point: np.unique
        took 2.0 s of the 7.1M points of a 10k x 180 book, between reading and replaying)."""
        present = np.zeros(len(self.account_ids), dtype=bool)
        present[codes] = True
        return present

    def time_range(self) -> tuple[int, int] | None:
        """(first, last) bucket start over all points (storage.usage.usage_range)."""
        if not len(self.bucket):
            return None
        return int(self.bucket.min()), int(self.bucket.max())

    def metric_facts(self) -> tuple[dict[str, MetricFacts], set[str]]:
        """rules.lint MetricFacts per metric, and the accounts with usage (rules.lint.facts_from).
        Each metric's points are one run (freeze): its accounts and distinct buckets are marked in
        bitmaps, not found by np.unique of its points."""
        out: dict[str, MetricFacts] = {}
        for name in self.metrics:
            part = self._metric_slice(name)
            if part.stop == part.start:
                continue
            acc, bucket = self.account[part], self.bucket[part]
            n_accounts = int(self._accounts_present(acc).sum())
            stamps = _distinct_sorted(bucket, self.base_step)
            gaps = np.diff(stamps)
            out[name] = MetricFacts(n_accounts, int(stamps[0]), int(stamps[-1]),
                                    int(gaps.min()) if gaps.size else None)
        with_usage = {self.account_ids[i] for i in np.flatnonzero(self._accounts_present(self.account)).tolist()}
        return out, with_usage

    def _metric_slice(self, metric: str) -> slice:
        code = self._met_code.get(metric)
        if code is None:
            return slice(0, 0)
        lo, hi = np.searchsorted(self.metric, [code, code + 1])
        return slice(int(lo), int(hi))

    def block(self, metric: str, step: int, start: int, end: int) -> MetricBlock:
        """The usage of `metric` in buckets [start, end) of `step` seconds (storage.usage.load_block).
        A cell's points are added in ascending bucket (the points are sorted by account, then
        bucket: np.bincount adds them in that order, from 0.0), the order of every storage read
        (storage.tiles.bin_cells), so the backtest's sums are the served ones, bit for bit."""
        if self.bucket_major:
            raise ValueError("UsagePoints.block: frozen bucket-major (a bulk load's order), not per account")
        n_cols = (end - start) // step
        part = self._metric_slice(metric)
        acc, bucket, value = self.account[part], self.bucket[part], self.value[part]
        inside = (bucket >= start) & (bucket < end)
        codes = np.unique(acc[inside])
        if not codes.size or n_cols <= 0:
            return MetricBlock(metric, start, step, [], np.full((0, max(n_cols, 0)), np.nan))
        row_of = np.full(len(self.account_ids), -1, dtype=np.int64)
        row_of[codes] = np.arange(codes.size)
        col = (bucket[inside] - start) // step
        flat = row_of[acc[inside]] * n_cols + col
        cells = codes.size * n_cols
        sums = np.bincount(flat, weights=value[inside], minlength=cells).reshape(codes.size, n_cols)
        has = (np.bincount(flat, minlength=cells) > 0).reshape(codes.size, n_cols)
        observed = np.zeros(n_cols, dtype=bool)
        observed[np.unique(col)] = True
        # first-ever point of each row's account for the metric (points are sorted by account, bucket)
        starts = np.flatnonzero(np.r_[True, acc[1:] != acc[:-1]]) if len(acc) else np.zeros(0, np.int64)
        first_bucket = np.empty(len(self.account_ids), dtype=np.int64)
        first_bucket[acc[starts]] = bucket[starts]
        first_col = np.maximum(0, (first_bucket[codes] - start) // step)
        zero = (np.arange(n_cols)[None, :] >= first_col[:, None]) & observed[None, :]
        zero |= has
        sums[~zero] = np.nan
        return MetricBlock(metric, start, step, [self.account_ids[int(c)] for c in codes], sums)


def _codes(ids: list[str], codes: dict[str, int]) -> np.ndarray:
    """The int32 code of each id; a new id gets the next code (dict order = code order: account_ids
    follows it at freeze). The distinct ids are found by dict.fromkeys and checked to be text, then
    each id is looked up in C (map): no Python-level step per id (400,000 ids of 100,000 accounts:
    ~30 ms against ~110 ms for a setdefault per id)."""
    for x in dict.fromkeys(ids):
        if not isinstance(x, str):
            raise TypeError(f"an id of {type(x).__name__}, not text: {x!r}")
        codes.setdefault(x, len(codes))
    return np.fromiter(map(codes.__getitem__, ids), dtype=np.int32, count=len(ids))


def _distinct_sorted(bucket: np.ndarray, step: int) -> np.ndarray:
    """np.unique(bucket) of multiples of `step`: by a bitmap of the steps between the first and the
    last when it is not much larger than the points, else np.unique."""
    lo, hi = int(bucket.min()), int(bucket.max())
    slots = (hi - lo) // step + 1
    if slots > 4 * len(bucket) + (1 << 20):
        return np.unique(bucket)
    seen = np.zeros(slots, dtype=bool)
    seen[(bucket - lo) // step] = True
    return lo + np.flatnonzero(seen).astype(np.int64) * step


def _id_order(ids: list[str]) -> np.ndarray:
    """The order that sorts `ids` (code points, as Python and SQLite's BINARY collation compare
    UTF-8): Arrow's sort in C (100k ids: 72 ms against 159 ms for sorted() with a key), Python's
    for ids that are not valid Unicode (a lone surrogate has no UTF-8)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc

        return arrow_ints(pc.sort_indices(arrow_strings(ids)).cast(pa.int64()))
    except UnicodeEncodeError:
        return np.asarray(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)


def _sort_order(a: np.ndarray, m: np.ndarray, b: np.ndarray, n_acc: int, step: int,
                bucket_major: bool) -> np.ndarray:
    """The stable sort order of the (metric, account, bucket) codes, or with bucket_major of
    (metric, bucket, account): one argsort of a composite int64 key where it fits (3.5M rows: 6 s
    against 18 s for np.lexsort of the three keys, loaded 2-core box), else lexsort. Equal keys stay
    in record order (the sums are added in record order)."""
    if not len(b):
        return np.zeros(0, dtype=np.int64)
    lo = int(b.min())
    n_b = (int(b.max()) - lo) // step + 1
    if (int(m.max()) + 1) * n_b * max(n_acc, 1) >= 2**62:
        return np.lexsort((a, b, m) if bucket_major else (b, a, m))
    slot = (b - lo) // step
    if bucket_major:
        key = (m.astype(np.int64) * n_b + slot) * n_acc + a
    else:
        key = (m.astype(np.int64) * n_acc + a) * n_b + slot
    return np.argsort(key, kind="stable")
