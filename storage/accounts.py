"""Account facts (plan, owner, CRM id, quotas, billing day, timezone)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from rules.gcpause import gc_paused
from rules.model import AccountFacts
from storage.models import Account, CrmAccountFacts

accounts_table: sa.Table = Account.__table__  # type: ignore[attr-defined]
crm_facts_table: sa.Table = CrmAccountFacts.__table__  # type: ignore[attr-defined]
_c = accounts_table.c
_FIELDS = ("name", "owner_email", "plan", "crm_id", "billing_day", "timezone", "quotas",  # _facts reads this order
           "csm_email", "arr", "renewal_at")
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
        "csm_email": a.csm_email, "arr": None if a.arr is None else float(a.arr),
        "renewal_at": None if a.renewal_at is None else int(a.renewal_at),
    }


def with_crm_facts(account: AccountFacts, facts: Mapping[str, Any]) -> AccountFacts:
    """`account` with the facts Salesforce supplies on top (quotas merge per metric: the CRM's win)."""
    if not facts:
        return account
    values = {k: v for k, v in facts.items() if k != "quotas"}
    if "quotas" in facts:
        values["quotas"] = {**dict(account.quotas), **dict(facts["quotas"])}
    return replace(account, **values)


def _crm_overlay(conn: Connection, ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    """The pulled CRM facts of these accounts (none at all: one cheap query)."""
    if conn.execute(sa.select(crm_facts_table.c.account_id).limit(1)).first() is None:
        return {}
    out: dict[str, Mapping[str, Any]] = {}
    c = crm_facts_table.c
    for i in range(0, len(ids), _CHUNK):
        q = sa.select(c.account_id, c.facts).where(c.account_id.in_(ids[i : i + _CHUNK]))
        out.update((r.account_id, r.facts or {}) for r in conn.execute(q))
    return out


def upsert_accounts(engine: Engine | Connection, accounts: Iterable[AccountFacts], now: int | None = None,
                    crm_overlay: bool = True) -> int:
    """Insert or replace accounts by id; returns how many were written.

    An id given twice in one call keeps its last facts. Accounts not given are left alone.
    Facts pulled from Salesforce (crm_account_facts) stay on top of what is given (the accounts CSV
    is the default, the CRM the source of truth), unless `crm_overlay` is False (the pull itself).
    Pass a Connection to write inside the caller's transaction.
    """
    if isinstance(engine, Connection):
        return _upsert(engine, accounts, now, crm_overlay)
    with engine.begin() as conn:
        return _upsert(conn, accounts, now, crm_overlay)


def _upsert(conn: Connection, accounts: Iterable[AccountFacts], now: int | None, crm_overlay: bool) -> int:
    at = int(time.time()) if now is None else int(now)
    given: dict[str, AccountFacts] = {a.id: a for a in accounts}
    if not given:
        return 0
    overlay = _crm_overlay(conn, sorted(given)) if crm_overlay else {}
    rows = {k: _row(with_crm_facts(a, overlay.get(k, {})), at) for k, a in given.items()}
    ins: Any = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(accounts_table)
    stmt = ins.on_conflict_do_update(
        index_elements=[_c.id],
        set_={f: ins.excluded[f] for f in (*_FIELDS, "updated_at")},
    )
    values = [rows[k] for k in sorted(rows)]  # key order: concurrent writers lock rows in one order
    _write_accounts(conn, stmt, values)
    return len(values)


def _write_accounts(conn: Connection, stmt: Any, values: list[dict[str, Any]]) -> None:
    for i in range(0, len(values), _CHUNK):
        conn.execute(stmt, values[i : i + _CHUNK])


def _facts(rows: list[Any]) -> list[AccountFacts]:
    """AccountFacts from driver rows (id, name, owner_email, plan, crm_id, billing_day, timezone, quotas,
    csm_email, arr, renewal_at).

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
            billing_day=int(r[5]), timezone=r[6], csm_email=r[8] or "",
            arr=None if r[9] is None else float(r[9]), renewal_at=None if r[10] is None else int(r[10]),
        ))
    return out


@gc_paused()
def list_accounts(engine: Engine, ids: Sequence[str] | None = None) -> list[AccountFacts]:
    """All accounts sorted by id, or the given ids in the given order (unknown ids are skipped).

    Rows come straight from the driver cursor (100k accounts in about half a second).
    """
    with engine.connect() as conn:
        return _read(conn, ids)


def _read(conn: Connection, ids: Sequence[str] | None, for_update: bool = False) -> list[AccountFacts]:
    """list_accounts on `conn`; for_update also locks the rows read (PostgreSQL) until the transaction ends."""
    dialect = conn.dialect.name
    mark = "?" if dialect == "sqlite" else "%s"
    # quotas as JSON text on PostgreSQL too (not decoded per row by the driver): _facts parses them at once
    cols = [f"{f}::text" if f == "quotas" and dialect == "postgresql" else f for f in _FIELDS]
    sql = f"SELECT id, {', '.join(cols)} FROM accounts"
    lock = " FOR UPDATE" if for_update and dialect == "postgresql" else ""
    cur = conn.connection.driver_connection.cursor()
    try:
        if ids is None:
            cur.execute(sql + " ORDER BY id" + lock)
            rows = cur.fetchall()
            rows.sort(key=lambda r: r[0])  # Python's order, whatever the database's collation
            return _facts(rows)
        wanted = list(ids)
        found: dict[str, AccountFacts] = {}
        for i in range(0, len(wanted), _CHUNK):
            part = wanted[i : i + _CHUNK]
            cur.execute(f"{sql} WHERE id IN ({', '.join([mark] * len(part))}) ORDER BY id{lock}", part)
            found.update((f.id, f) for f in _facts(cur.fetchall()))
    finally:
        cur.close()
    return [found[a] for a in wanted if a in found]


def apply_crm_facts(conn: Connection, facts: Mapping[str, Mapping[str, Any]], now: int) -> int:
    """Put facts pulled from Salesforce (account id -> the CRM's fields) on top of each account as it
    is now, in the caller's write transaction (storage.db.write_transaction): the rows are read there
    (locked on PostgreSQL; SQLite's write lock is already held), so an accounts CSV loaded while the
    pull ran keeps its other fields (a read before the transaction would write them back as they
    were). An account not stored yet is created from the facts. Returns how many were written."""
    if not facts:
        return 0
    ids = sorted(facts)
    current = {a.id: a for a in _read(conn, ids, for_update=True)}
    rows = [with_crm_facts(current.get(i) or AccountFacts(id=i, name=i), facts[i]) for i in ids]
    return _upsert(conn, rows, now, crm_overlay=False)
