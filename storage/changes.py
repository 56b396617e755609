"""Usage written since the scheduler last looked: which (account, metric) series changed, and
the first and last bucket written.

Every write to usage_points records its ranges here in the same transaction (storage.usage:
upserts, bulk loads, pushes and the sources' store path alike), so the scheduler
(bot.service.evaluation) re-evaluates the accounts whose data changed inside a rule's history,
whether it came from a poll, `usagebot ingest` or a backfill of months.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage.models import UsageChange

changes_table: sa.Table = UsageChange.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ChangeSet:
    upto_id: int  # delete_changes(upto_id) once handled
    by_metric: dict[str, dict[str, tuple[int, int]]]  # metric -> account -> (first, last) changed bucket


def read_changes(engine: Engine) -> ChangeSet:
    """Every recorded change, merged per metric and account. A row written before the last bucket
    was recorded counts as reaching every later bucket."""
    by_metric: dict[str, dict[str, tuple[int, int]]] = {}
    upto = 0
    c = changes_table.c
    with engine.connect() as conn:
        q = sa.select(c.id, c.account_id, c.metric, c.bucket_start, c.last_bucket).order_by(c.id)
        for rid, a, m, first, last in conn.execute(q):
            accs = by_metric.setdefault(m, {})
            lo, hi = int(first), (2**62 if last is None else int(last))
            old = accs.get(a)
            accs[a] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
            upto = int(rid)
    return ChangeSet(upto, by_metric)


def delete_changes(engine: Engine, upto_id: int) -> int:
    with engine.begin() as conn:
        return int(conn.execute(sa.delete(changes_table).where(changes_table.c.id <= upto_id)).rowcount)
