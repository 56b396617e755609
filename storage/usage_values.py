"""What a usage write is, shared by the row path (storage.usage) and the bulk path
(storage.usage_load): the record and column types, the finite-value rule and its errors (naming
the bucket), the summing of records into buckets, and the SQL fragments of the merge. It imports no
other storage module, so both write paths and the column types (storage.usage_columns) build on it
without importing each other."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sqlalchemy.exc import DataError, IntegrityError

from rules.periods import iso

MAX_VALUE = 1.7976931348623157e308  # the largest float64: a bucket total above it is stored as inf


class UsageValueError(ValueError):
    """A usage value, or a bucket's total, that is not a finite number; names the bucket. Nothing of
    the write that found it is stored. `bucket`: (account, metric, bucket start) of a total past the
    largest float64, when the error names one (a poll then refuses that bucket and stores the rest)."""

    def __init__(self, message: str, bucket: tuple[str, str, int] | None = None) -> None:
        super().__init__(message)
        self.bucket = bucket


def bucket_name(account: str, metric: str, bucket: int) -> str:
    return f"account {account!r}, metric {metric!r}, bucket {iso(bucket)}"


def overflow_error(what: str, account: str, metric: str, bucket: int, stored: float | None = None) -> UsageValueError:
    before = "" if stored is None else f" (stored {stored:.6g} plus the new values)"
    return UsageValueError(
        f"{what}: {bucket_name(account, metric, bucket)}: the values of the bucket add up to more than the "
        f"largest number a float64 holds (about {MAX_VALUE:.2g}){before}; nothing was stored (check these "
        "values: a wrong unit, or a corrupt row?)", bucket=(account, metric, int(bucket)))


def check_totals(sums: dict[tuple[str, str, int], float], what: str) -> None:
    """Raise UsageValueError naming a bucket whose summed total is not finite (two finite values
    can add up to inf: 1e308 + 1e308)."""
    if all(map(math.isfinite, sums.values())):  # the common case: one pass in C
        return
    a, m, b = next(k for k, v in sums.items() if not math.isfinite(v))
    raise overflow_error(what, a, m, b)


class UsageRecordLike(Protocol):
    account: str
    metric: str
    ts: int
    value: float


@dataclass(frozen=True)
class UsageColumns:
    """A chunk of usage rows as columns (a CSV file read by a columnar parser): accounts and metrics
    as pyarrow string Arrays (not chunked), ts int64 epoch seconds, values float64, all the same length. Values
    must already be finite (the reader checks them). load_usage takes these in place of records."""

    accounts: Any  # pyarrow.Array of str
    metrics: Any  # pyarrow.Array of str
    ts: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.values.size)


_INSERT = "INSERT INTO usage_points (account_id, metric, bucket_start, value) "
_CONFLICT = "ON CONFLICT (account_id, metric, bucket_start) DO UPDATE SET value = "
# replace: unchanged rows are not rewritten; add (events counted into their bucket): always.
# A sum past the largest float64 must fail, not store inf: PostgreSQL raises "value out of range"
# itself; SQLite would store inf, so there the sum becomes NULL past MAX_VALUE and NOT NULL refuses it.
_SQLITE_FINITE = "CASE WHEN abs({x}) <= " + repr(MAX_VALUE) + " THEN {x} END"
_SET = {
    ("sqlite", False): "excluded.value WHERE usage_points.value IS NOT excluded.value",
    ("postgresql", False): "excluded.value WHERE usage_points.value IS DISTINCT FROM excluded.value",
    ("sqlite", True): _SQLITE_FINITE.format(x="usage_points.value + excluded.value"),
    ("postgresql", True): "usage_points.value + excluded.value",
}
_SUM = {"sqlite": _SQLITE_FINITE.format(x="SUM(value)"), "postgresql": "SUM(value)"}


def _overflowed(exc: IntegrityError | DataError) -> bool:
    text = str(exc.orig)
    return "value out of range" in text or "NOT NULL constraint failed: usage_points.value" in text

_KEY = "account_id, metric, bucket_start"  # the columns, in the order of the table and of the stage
# usage_points' primary key (storage.models.UsagePoint): rows merged in this order append to its B-tree
_ORDER = "metric, bucket_start, account_id"


def sum_records(records: Iterable[UsageRecordLike], base_step: int = 60) -> dict[tuple[str, str, int], float]:
    """Floor each record's ts to `base_step` and sum values per (account, metric, bucket)."""
    if base_step <= 0:
        raise ValueError(f"base_step must be a positive number of seconds, got {base_step}")
    acc: dict[tuple[str, str, int], float] = {}
    get = acc.get
    isfinite = math.isfinite
    for n, r in enumerate(records):
        ts = r.ts
        value = r.value
        try:
            ts = int(ts) if type(ts) is int else math.floor(ts)
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(
                f"usage record #{n} ({r!r}): ts must be epoch seconds and value a number"
            ) from None
        if not isfinite(value):
            raise UsageValueError(f"usage record #{n} ({r!r}): value {value} is not a finite number")
        key = (r.account, r.metric, ts - ts % base_step)
        acc[key] = get(key, 0.0) + value
    check_totals(acc, "usage records")
    return acc


def newest_ts(columns: Iterable[UsageColumns], records: Sequence[UsageRecordLike] = ()) -> int | None:
    """The newest ts of a delivery's columns and records (None: no row)."""
    stamps = [int(c.ts.max()) for c in columns if len(c)]
    stamps += [max(int(r.ts) for r in records)] if records else []
    return max(stamps, default=None)
