"""Account facts (plan, owner, CRM id, quotas, billing day, timezone)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from rules.gcpause import gc_paused
from rules.model import AccountFacts
from storage.models import Account

accounts_table: sa.Table = Account.__table__  # type: ignore[attr-defined]
_c = accounts_table.c
_FIELDS = ("name", "owner_email", "plan", "crm_id", "billing_day", "timezone", "quotas")  # _facts reads this order
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


def upsert_accounts(engine: Engine | Connection, accounts: Iterable[AccountFacts], now: int | None = None) -> int:
    """Insert or replace accounts by id; returns how many were written.

    An id given twice in one call keeps its last facts. Accounts not given are left alone.
    Pass a Connection to write inside the caller's transaction.
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
    values = [rows[k] for k in sorted(rows)]  # key order: concurrent writers lock rows in one order
    if isinstance(engine, Connection):
        _write_accounts(engine, stmt, values)
    else:
        with engine.begin() as conn:
            _write_accounts(conn, stmt, values)
    return len(values)


def _write_accounts(conn: Connection, stmt: Any, values: list[dict[str, Any]]) -> None:
    for i in range(0, len(values), _CHUNK):
        conn.execute(stmt, values[i : i + _CHUNK])


def _facts(rows: list[Any]) -> list[AccountFacts]:
    """AccountFacts from driver rows (id, name, owner_email, plan, crm_id, billing_day, timezone, quotas).

    The quotas come as JSON text (list_accounts asks PostgreSQL for text too): all rows' texts are
    parsed with one json.loads of a JSON array (a parse per row costs more than the rest of the row).
    """
    texts = [r[7] for r in rows if isinstance(r[7], str)]
    parsed = iter(json.loads("[" + ",".join(texts) + "]")) if texts else iter(())
    out = []
    for r in rows:
        quotas = next(parsed) if isinstance(r[7], str) else r[7]
        out.append(AccountFacts(
            id=r[0], name=r[1], owner_email=r[2], plan=r[3], crm_id=r[4],
            quotas={str(k): float(v) for k, v in quotas.items()} if quotas else {},
            billing_day=int(r[5]), timezone=r[6],
        ))
    return out


@gc_paused()
def list_accounts(engine: Engine, ids: Sequence[str] | None = None) -> list[AccountFacts]:
    """All accounts sorted by id, or the given ids in the given order (unknown ids are skipped).

    Rows come straight from the driver cursor (100k accounts in about half a second).
    """
    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    # quotas as JSON text on PostgreSQL too (not decoded per row by the driver): _facts parses them at once
    cols = [f"{f}::text" if f == "quotas" and engine.dialect.name == "postgresql" else f for f in _FIELDS]
    sql = f"SELECT id, {', '.join(cols)} FROM accounts"
    with engine.connect() as conn:
        cur = conn.connection.driver_connection.cursor()
        try:
            if ids is None:
                cur.execute(sql + " ORDER BY id")
                rows = cur.fetchall()
                rows.sort(key=lambda r: r[0])  # Python's order, whatever the database's collation
                return _facts(rows)
            wanted = list(ids)
            found: dict[str, AccountFacts] = {}
            for i in range(0, len(wanted), _CHUNK):
                part = wanted[i : i + _CHUNK]
                cur.execute(f"{sql} WHERE id IN ({', '.join([mark] * len(part))})", part)
                found.update((f.id, f) for f in _facts(cur.fetchall()))
        finally:
            cur.close()
    return [found[a] for a in wanted if a in found]
