"""The web UI's reads: paged, filtered alert lists and one episode's record (read only).

Every list is a keyset page (newest first by started_at, then id) of at most `limit` rows, so a
page costs the same on page 1 and page 1,000, and every filter has an index to start from
(alert_episodes: started_at, status, rule_id, account_id; accounts: owner_email; see
storage/migrations/versions/0011_web_ui_indexes.py). Counts stop at COUNT_CAP.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from storage.db import bigint_of
from storage.episodes import episodes_table, events_table
from storage.models import Account, SlackMessage

accounts_table: sa.Table = Account.__table__  # type: ignore[attr-defined]
slack_messages: sa.Table = SlackMessage.__table__  # type: ignore[attr-defined]
_e = episodes_table.c
_a = accounts_table.c
STATES = ("pending", "firing", "resolved", "acknowledged", "snoozed", "open")
COUNT_CAP = 10_000
MAX_MATCHES = 500  # accounts an account/owner filter may expand to


@dataclass(frozen=True)
class AlertFilter:
    """What the alert list shows. Empty fields do not filter. `accounts`: the ids the viewer may
    see (None = every account; owner-only access passes the viewer's accounts)."""

    owner: str = ""
    rule: str = ""
    kind: str = ""
    state: str = ""
    account: str = ""
    since: int | None = None  # started at or after (epoch seconds)
    until: int | None = None  # started before
    accounts: frozenset[str] | None = None


@dataclass(frozen=True)
class Cursor:
    """The keyset position after the last row of a page (started_at, id)."""

    started_at: int
    id: int

    def encode(self) -> str:
        return f"{self.started_at}.{self.id}"

    @staticmethod
    def decode(text: str | None) -> Cursor | None:
        if not text:
            return None
        a, _, b = text.partition(".")
        started_at, eid = bigint_of(a), bigint_of(b, 0)
        if started_at is None or eid is None:
            raise ValueError(f"not a page position: {text[:40]!r}")
        return Cursor(started_at, eid)


@dataclass
class AlertPage:
    rows: list[dict[str, Any]]
    next: Cursor | None
    count: int  # matching alerts (at most COUNT_CAP + 1: "10,000+")
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> name, owner_email, plan


def _owner_accounts(conn: Connection, email: str) -> list[str]:
    """Ids of the accounts owned by `email` (case-insensitive; the index serves the exact spellings)."""
    e = email.strip().lower()
    spellings = {e, email.strip()}
    q = sa.select(_a.id, _a.owner_email).where(_a.owner_email.in_(sorted(spellings)))
    ids = [r.id for r in conn.execute(q)]
    if not ids:  # stored with other capitals: one scan of the column
        q2 = sa.select(_a.id).where(sa.func.lower(sa.func.trim(_a.owner_email)) == e)
        ids = list(conn.execute(q2).scalars())
    return ids


def owner_accounts(engine: Engine, email: str) -> frozenset[str]:
    with engine.connect() as conn:
        return frozenset(_owner_accounts(conn, email))


def _account_matches(conn: Connection, text: str) -> list[str]:
    """Accounts an account filter means: the id itself, else names or ids containing the text."""
    t = text.strip()
    if conn.execute(sa.select(_a.id).where(_a.id == t)).first() is not None:
        return [t]
    like = "%" + t.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    q = (sa.select(_a.id).where(sa.or_(sa.func.lower(_a.name).like(like, escape="\\"),
                                        sa.func.lower(_a.id).like(like, escape="\\")))
         .order_by(_a.id).limit(MAX_MATCHES))
    ids = list(conn.execute(q).scalars())
    return ids or [t]  # an id no longer in the accounts table still has its alerts


def _conditions(conn: Connection, f: AlertFilter, rule_kinds: dict[str, str], now: int) -> list[Any] | None:
    """WHERE conditions of the filter; None when nothing can match."""
    cond: list[Any] = []
    allowed: set[str] | None = None if f.accounts is None else set(f.accounts)
    if f.owner:
        owned = set(_owner_accounts(conn, f.owner))
        allowed = owned if allowed is None else allowed & owned
    if f.account:
        matched = set(_account_matches(conn, f.account))
        allowed = matched if allowed is None else allowed & matched
    if allowed is not None:
        if not allowed:
            return None
        cond.append(_e.account_id.in_(sorted(allowed)))
    if f.rule:
        cond.append(_e.rule_id == f.rule)
    if f.kind:
        ids = sorted(r for r, k in rule_kinds.items() if k == f.kind)
        if not ids:
            return None
        cond.append(_e.rule_id.in_(ids))
    if f.state in ("pending", "firing", "resolved"):
        cond.append(_e.status == f.state)
    elif f.state == "open":
        cond.append(_e.status.in_(["pending", "firing"]))
    elif f.state == "acknowledged":
        cond += [_e.status.in_(["pending", "firing"]), _e.acknowledged_by.is_not(None)]
    elif f.state == "snoozed":
        cond += [_e.status.in_(["pending", "firing"]), _e.snoozed_until > now]
    if f.since is not None:
        cond.append(_e.started_at >= f.since)
    if f.until is not None:
        cond.append(_e.started_at < f.until)
    return cond


LIST_COLUMNS = (_e.id, _e.rule_id, _e.account_id, _e.metric, _e.discriminator, _e.status, _e.severity,
                _e.started_at, _e.fired_at, _e.resolved_at, _e.acknowledged_by, _e.snoozed_until, _e.held,
                _e.last_explanation)


def alert_page(engine: Engine, f: AlertFilter, rule_kinds: dict[str, str], now: int, limit: int = 50,
               after: Cursor | None = None) -> AlertPage:
    """One page of alert episodes matching `f`, newest first, after `after`."""
    with engine.connect() as conn:
        cond = _conditions(conn, f, rule_kinds, now)
        if cond is None:
            return AlertPage([], None, 0)
        q = sa.select(*LIST_COLUMNS).where(*cond)
        if after is not None:
            q = q.where(sa.or_(_e.started_at < after.started_at,
                               sa.and_(_e.started_at == after.started_at, _e.id < after.id)))
        q = q.order_by(_e.started_at.desc(), _e.id.desc()).limit(limit + 1)
        rows = [dict(r._mapping) for r in conn.execute(q)]
        capped = sa.select(sa.literal(1)).select_from(episodes_table).where(*cond).limit(COUNT_CAP + 1).subquery()
        count = int(conn.execute(sa.select(sa.func.count()).select_from(capped)).scalar_one())
        accounts = _accounts(conn, {r["account_id"] for r in rows[:limit]})
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = Cursor(int(rows[-1]["started_at"]), int(rows[-1]["id"]))
    return AlertPage(rows, nxt, count, accounts)


def _accounts(conn: Connection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    wanted = sorted(set(ids))
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(wanted), 1000):
        q = sa.select(_a.id, _a.name, _a.owner_email, _a.plan, _a.crm_id).where(_a.id.in_(wanted[i:i + 1000]))
        out.update((r.id, dict(r._mapping)) for r in conn.execute(q))
    return out


@dataclass
class EpisodeRecord:
    episode: dict[str, Any]
    events: list[dict[str, Any]]
    messages: list[dict[str, Any]]  # Slack parent messages (destination, channel, ts)
    account: dict[str, Any] | None
    others: list[dict[str, Any]]  # the same key's other episodes (newest first)


def episode_record(engine: Engine, episode_id: int) -> EpisodeRecord | None:
    """Everything stored about one episode: its row, every transition and action, its Slack messages."""
    v, m = events_table.c, slack_messages.c
    with engine.connect() as conn:
        row = conn.execute(sa.select(episodes_table).where(_e.id == episode_id)).one_or_none()
        if row is None:
            return None
        ep = dict(row._mapping)
        events = [dict(r._mapping) for r in conn.execute(
            sa.select(events_table).where(v.episode_id == episode_id).order_by(v.at, v.id))]
        messages = [dict(r._mapping) for r in conn.execute(
            sa.select(m.destination, m.channel, m.ts, m.last_event, m.last_event_at, m.created_at)
            .where(m.episode_id == episode_id).order_by(m.id))]
        others = [dict(r._mapping) for r in conn.execute(
            sa.select(_e.id, _e.status, _e.started_at, _e.fired_at, _e.resolved_at)
            .where(_e.account_id == ep["account_id"], _e.rule_id == ep["rule_id"], _e.metric == ep["metric"],
                   _e.discriminator == ep["discriminator"], _e.id != episode_id)
            .order_by(_e.id.desc()).limit(20))]
        account = _accounts(conn, [ep["account_id"]]).get(ep["account_id"])
    return EpisodeRecord(ep, events, messages, account, others)


def account_episode_rows(engine: Engine, account_id: str, limit: int = 200) -> list[dict[str, Any]]:
    """The account's episodes, newest first (ix_alert_episodes_account)."""
    with engine.connect() as conn:
        q = (sa.select(episodes_table).where(_e.account_id == account_id).order_by(_e.id.desc()).limit(limit))
        return [dict(r._mapping) for r in conn.execute(q)]
