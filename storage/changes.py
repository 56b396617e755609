"""Usage written since the scheduler last looked: which (account, metric) series changed, and
the first and last bucket written.

Every write to usage_points records its ranges here in the same transaction (storage.usage:
upserts, bulk loads, pushes and the sources' store path alike), so the scheduler
(bot.service.evaluation) re-evaluates the accounts whose data changed inside a rule's history,
whether it came from a poll, `usagebot ingest` or a backfill of months.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage.models import UsageChange, UsagePoint

changes_table: sa.Table = UsageChange.__table__  # type: ignore[attr-defined]
points_table: sa.Table = UsagePoint.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ChangeSet:
    upto_id: int  # delete_changes(upto_id) once handled
    by_metric: dict[str, dict[str, tuple[int, int]]]  # metric -> account -> (first, last) changed bucket
    # metric -> (first, last) bucket ranges written for every account stored in them (a write of new
    # buckets records one row per (metric, bucket), not one per account: see changed_accounts)
    wide: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # (metric, first, last) -> the accounts stored there, read once per tick for all the metric's rules
    _stored: dict[tuple[str, int, int], frozenset[str]] = field(default_factory=dict, compare=False, repr=False)

    def metrics(self) -> set[str]:
        """The metrics with any change."""
        return set(self.by_metric) | set(self.wide)


def read_changes(engine: Engine) -> ChangeSet:
    """Every recorded change, merged per metric and account. A row written before the last bucket
    was recorded counts as reaching every later bucket."""
    by_metric: dict[str, dict[str, tuple[int, int]]] = {}
    wide: dict[str, list[tuple[int, int]]] = {}
    upto = 0
    c = changes_table.c
    with engine.connect() as conn:
        q = sa.select(c.id, c.account_id, c.metric, c.bucket_start, c.last_bucket).order_by(c.id)
        for rid, a, m, first, last in conn.execute(q):
            lo, hi = int(first), (2**62 if last is None else int(last))
            upto = int(rid)
            if a is None:
                wide.setdefault(m, []).append((lo, hi))
                continue
            accs = by_metric.setdefault(m, {})
            old = accs.get(a)
            accs[a] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return ChangeSet(upto, by_metric, wide)


def changed_accounts(engine: Engine, changes: ChangeSet, metric: str, before: int, since: int) -> set[str]:
    """The accounts of `metric` with a change in a bucket that starts before `before` and a change
    reaching `since` or later (the late-data test of bot.service.evaluation). A wide change's
    accounts are read from usage_points (one range of its key per wide range that passes the test):
    they are the accounts stored in those buckets, which for a write of new buckets are the write's
    own (and, at most, a concurrent writer's of the same buckets, re-evaluated once more)."""
    out = {a for a, (first, last) in changes.by_metric.get(metric, {}).items() if first < before and last >= since}
    ranges = [(max(lo, since), min(hi, before - 1)) for lo, hi in changes.wide.get(metric, ()) if lo < before and hi >= since]
    if not ranges:
        return out
    p = points_table.c
    with engine.connect() as conn:
        for lo, hi in ranges:
            key = (metric, lo, hi)
            if key not in changes._stored:
                q = sa.select(p.account_id).distinct().where(p.metric == metric, p.bucket_start.between(lo, hi))
                changes._stored[key] = frozenset(conn.execute(q).scalars())
            out |= changes._stored[key]
    return out


def delete_changes(engine: Engine, upto_id: int) -> int:
    with engine.begin() as conn:
        return int(conn.execute(sa.delete(changes_table).where(changes_table.c.id <= upto_id)).rowcount)
