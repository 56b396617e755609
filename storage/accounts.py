"""Account facts (plan, owner, CRM id, quotas, billing day, timezone)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from rules.model import AccountFacts
from storage.models import Account

accounts_table: sa.Table = Account.__table__  # type: ignore[attr-defined]
_c = accounts_table.c
_FIELDS = ("name", "owner_email", "plan", "crm_id", "billing_day", "timezone", "quotas")
_CHUNK = 1000


def _row(a: AccountFacts, now: int) -> dict[str, Any]:
    quotas: dict[str, float] = {}
    for metric, q in dict(a.quotas).items():
        try:
            value = float(q)
        except (TypeError, ValueError):
            raise ValueError(f"account {a.id!r}: quota for metric {metric!r} must be a number, got {q!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"account {a.id!r}: quota for metric {metric!r} must be finite, got {q!r}")
        quotas[str(metric)] = value
    return {
        "id": a.id, "name": a.name, "owner_email": a.owner_email, "plan": a.plan, "crm_id": a.crm_id,
        "billing_day": int(a.billing_day), "timezone": a.timezone, "quotas": quotas, "updated_at": now,
    }


def upsert_accounts(engine: Engine, accounts: Iterable[AccountFacts], now: int | None = None) -> int:
    """Insert or replace accounts by id; returns how many were written.

    An id given twice in one call keeps its last facts. Accounts not given are left alone.
    """
    at = int(time.time()) if now is None else int(now)
    rows: dict[str, dict[str, Any]] = {}
    for a in accounts:
        rows[a.id] = _row(a, at)
    if not rows:
        return 0
    ins: Any = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert(accounts_table)
    stmt = ins.on_conflict_do_update(
        index_elements=[_c.id],
        set_={f: ins.excluded[f] for f in (*_FIELDS, "updated_at")},
    )
    values = list(rows.values())
    with engine.begin() as conn:
        for i in range(0, len(values), _CHUNK):
            conn.execute(stmt, values[i : i + _CHUNK])
    return len(values)


def _facts(row: Any) -> AccountFacts:
    return AccountFacts(
        id=row.id, name=row.name, plan=row.plan, owner_email=row.owner_email, crm_id=row.crm_id,
        quotas={str(k): float(v) for k, v in (row.quotas or {}).items()},
        billing_day=int(row.billing_day), timezone=row.timezone,
    )


def list_accounts(engine: Engine, ids: Sequence[str] | None = None) -> list[AccountFacts]:
    """All accounts sorted by id, or the given ids in the given order (unknown ids are skipped)."""
    cols = [_c.id, *(_c[f] for f in _FIELDS)]
    with engine.connect() as conn:
        if ids is None:
            return [_facts(r) for r in conn.execute(sa.select(*cols).order_by(_c.id))]
        wanted = list(ids)
        found: dict[str, AccountFacts] = {}
        for i in range(0, len(wanted), _CHUNK):
            q = sa.select(*cols).where(_c.id.in_(wanted[i : i + _CHUNK]))
            found.update((r.id, _facts(r)) for r in conn.execute(q))
    return [found[a] for a in wanted if a in found]
