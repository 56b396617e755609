"""Slack state: user lookup cache, episode messages (threads), delivery steps, feedback,
digest queue and account snoozes. Times are int epoch seconds UTC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rules.lifecycle import EpisodeState
from storage.db import db_clock, write_transaction
from storage.dialect import dialect_insert as _insert
from storage.episodes import episodes_table, get_episode, state_from_row
from storage.jsonsafe import json_safe
from storage.models import (
    SlackAccountSnooze,
    SlackDeliveryStep,
    SlackDigestItem,
    SlackFeedback,
    SlackMessage,
    SlackRequestSeen,
    SlackUser,
)
from storage.outbox import outbox_table

users_table: sa.Table = SlackUser.__table__  # type: ignore[attr-defined]
messages_table: sa.Table = SlackMessage.__table__  # type: ignore[attr-defined]
steps_table: sa.Table = SlackDeliveryStep.__table__  # type: ignore[attr-defined]
feedback_table: sa.Table = SlackFeedback.__table__  # type: ignore[attr-defined]
digest_table: sa.Table = SlackDigestItem.__table__  # type: ignore[attr-defined]
snoozes_table: sa.Table = SlackAccountSnooze.__table__  # type: ignore[attr-defined]
requests_seen_table: sa.Table = SlackRequestSeen.__table__  # type: ignore[attr-defined]

NOT_USEFUL = "not_useful"


def _opt(x: Any) -> int | None:
    return None if x is None else int(x)


# -------------------------------------------------------------------------- users


@dataclass(frozen=True)
class CachedUser:
    email: str
    user_id: str | None  # None: no Slack user has this email
    dm_channel: str | None
    looked_up_at: int
    tz: str | None = None  # the user's IANA timezone; "" when Slack has none; None when not asked yet


def cached_user(engine: Engine, email: str, now: int, ttl: int, negative_ttl: int) -> CachedUser | None:
    """The cached lookup of `email`, or None when there is none or it is older than its TTL."""
    c = users_table.c
    with engine.connect() as conn:
        r = conn.execute(sa.select(users_table).where(c.email == email.strip().lower())).one_or_none()
    if r is None:
        return None
    age = now - int(r.looked_up_at)
    if age > (ttl if r.user_id else negative_ttl) or age < 0:
        return None
    return CachedUser(r.email, r.user_id, r.dm_channel, int(r.looked_up_at), r.tz)


def store_user(engine: Engine, email: str, user_id: str | None, now: int, dm_channel: str | None = None,
               tz: str | None = None) -> None:
    """Remember a lookup (user_id None = not found). A known DM channel and timezone are kept for
    the same user (tz: the user's `tz` from the lookup, when it had one)."""
    c = users_table.c
    email = email.strip().lower()
    with write_transaction(engine) as conn:
        prev = conn.execute(sa.select(users_table).where(c.email == email)).one_or_none()
        same = prev is not None and prev.user_id == user_id and user_id
        keep_dm = prev.dm_channel if same else None
        keep_tz = prev.tz if same else None
        ins = _insert(conn, users_table)
        values = {"email": email, "user_id": user_id, "dm_channel": dm_channel or keep_dm, "looked_up_at": now,
                  "tz": tz if tz is not None else keep_tz}
        conn.execute(ins.values(**values).on_conflict_do_update(
            index_elements=[c.email], set_={k: v for k, v in values.items() if k != "email"}))


def set_dm_channel(engine: Engine, email: str, channel: str) -> None:
    c = users_table.c
    with engine.begin() as conn:
        conn.execute(sa.update(users_table).where(c.email == email.strip().lower()).values(dm_channel=channel))


def clear_dm_channel(engine: Engine, email: str, channel: str | None = None) -> None:
    """Forget the stored DM channel of `email` (Slack no longer knows it): the next lookup opens it anew.
    `channel`: only when it is still the one stored (not one opened anew meanwhile)."""
    c = users_table.c
    q = sa.update(users_table).where(c.email == email.strip().lower())
    if channel is not None:
        q = q.where(c.dm_channel == channel)
    with engine.begin() as conn:
        conn.execute(q.values(dm_channel=None))


def set_user_tz(engine: Engine, email: str, tz: str) -> None:
    """The user's timezone from users.info ("" when Slack has none), cached with the lookup."""
    c = users_table.c
    with engine.begin() as conn:
        conn.execute(sa.update(users_table).where(c.email == email.strip().lower()).values(tz=tz))


def dms_since(engine: Engine, email: str, since: int) -> int:
    """Alert messages posted in the DM of `email` (parent messages: one per alert episode) since `since`."""
    c = messages_table.c
    q = sa.select(sa.func.count()).where(c.destination == f"dm:{email.strip().lower()}", c.created_at >= since)
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def email_of_user(engine: Engine, user_id: str, now: int, ttl: int) -> str | None:
    """The cached email of a Slack user id (from an earlier lookup), if fresh."""
    c = users_table.c
    q = sa.select(c.email, c.looked_up_at).where(c.user_id == user_id).order_by(c.looked_up_at.desc()).limit(1)
    with engine.connect() as conn:
        r = conn.execute(q).one_or_none()
    if r is None or not 0 <= now - int(r.looked_up_at) <= ttl:
        return None
    return str(r.email)


# ----------------------------------------------------------------------- messages


@dataclass(frozen=True)
class EpisodeMessage:
    id: int
    episode_id: int
    destination: str
    channel: str
    ts: str
    alert: dict[str, Any]
    last_event: str
    last_event_at: int


def _message(r: Any) -> EpisodeMessage:
    return EpisodeMessage(int(r.id), int(r.episode_id), r.destination, r.channel, r.ts, dict(r.alert or {}),
                          r.last_event, int(r.last_event_at))


def episode_messages(engine: Engine, episode_id: int) -> list[EpisodeMessage]:
    c = messages_table.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(messages_table).where(c.episode_id == episode_id).order_by(c.id)).all()
    return [_message(r) for r in rows]


def save_message(
    engine: Engine, episode_id: int, destination: str, channel: str, ts: str, alert: Mapping[str, Any],
    event: str, at: int,
) -> EpisodeMessage:
    """Insert (or replace, when the old parent is gone) the parent message of an episode in a destination."""
    c = messages_table.c
    payload = json_safe(dict(alert), f"slack message of episode {episode_id}")
    values = {"episode_id": episode_id, "destination": destination, "channel": channel, "ts": ts,
              "alert": payload, "last_event": event, "last_event_at": at, "created_at": at}
    with write_transaction(engine) as conn:
        ins = _insert(conn, messages_table)
        conn.execute(ins.values(**values).on_conflict_do_update(
            index_elements=[c.episode_id, c.destination],
            set_={k: v for k, v in values.items() if k not in ("episode_id", "destination")}))
        r = conn.execute(sa.select(messages_table).where(
            c.episode_id == episode_id, c.destination == destination)).one()
    return _message(r)


def note_message_event(engine: Engine, message_id: int, event: str, at: int) -> None:
    """The latest event shown on a parent message (re-notified / resolved), for re-rendering it."""
    c = messages_table.c
    with engine.begin() as conn:
        conn.execute(sa.update(messages_table).where(c.id == message_id, c.last_event_at <= at)
                     .values(last_event=event, last_event_at=at))


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class DeliveryStep:
    step: str
    channel: str
    thread_ts: str | None
    ts: str | None
    attempted_at: int
    done_at: int | None
    claim_token: str | None = None
    lease_until: int | None = None  # database clock

    @property
    def done(self) -> bool:
        return self.ts is not None


def _step(r: Any) -> DeliveryStep:
    return DeliveryStep(r.step, r.channel, r.thread_ts, r.ts, int(r.attempted_at), _opt(r.done_at), r.claim_token,
                        _opt(r.lease_until))


def get_step(engine: Engine, step: str) -> DeliveryStep | None:
    with engine.connect() as conn:
        r = conn.execute(sa.select(steps_table).where(steps_table.c.step == step)).one_or_none()
    return None if r is None else _step(r)


def claim_step(engine: Engine, step: str, channel: str, thread_ts: str | None, now: int, token: str,
               lease: int) -> tuple[DeliveryStep | None, bool]:
    """Take the right to post step `step` for `lease` seconds (database clock); committed BEFORE
    the request. Returns (the step as it was before, whether it is now held with `token`).

    Not held: the step is done (its ts is set), or another live deliverer holds it. A step that
    existed unfinished before (previous state not None, ts None) was maybe posted by an earlier
    attempt: look for the message before posting. The first attempt time is kept.
    """
    c = steps_table.c
    db_now = db_clock(engine.dialect.name)
    with write_transaction(engine) as conn:
        q = sa.select(steps_table, db_now.label("db_now")).where(c.step == step)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()
        r = conn.execute(q).one_or_none()
        if r is None:
            ins = _insert(conn, steps_table).values(step=step, channel=channel, thread_ts=thread_ts, ts=None,
                                                    attempted_at=now, claim_token=token, lease_until=db_now + lease)
            if conn.execute(ins.on_conflict_do_nothing(index_elements=[c.step]).returning(c.step)).first():
                return None, True
            r = conn.execute(q).one()  # inserted by another deliverer just now: theirs
            return _step(r), False
        prev = _step(r)
        live = prev.lease_until is not None and prev.lease_until >= int(r.db_now) and prev.claim_token != token
        if prev.done or live:
            return prev, False
        conn.execute(sa.update(steps_table).where(c.step == step).values(
            channel=channel, thread_ts=thread_ts, claim_token=token, lease_until=db_now + lease))
        return prev, True


def release_step(engine: Engine, step: str, token: str) -> None:
    """Give up the claim on an unfinished step (its outcome stays unknown: the next try looks first)."""
    c = steps_table.c
    with engine.begin() as conn:
        conn.execute(sa.update(steps_table).where(c.step == step, c.claim_token == token)
                     .values(claim_token=None, lease_until=None))


def finish_step(engine: Engine, step: str, channel: str, ts: str, now: int) -> None:
    """The step's message is posted as `ts` (recorded whoever holds the claim: the message exists)."""
    c = steps_table.c
    with engine.begin() as conn:
        ins = _insert(conn, steps_table)
        conn.execute(ins.values(step=step, channel=channel, thread_ts=None, ts=ts, attempted_at=now, done_at=now)
                     .on_conflict_do_update(index_elements=[c.step],
                                            set_={"channel": channel, "ts": ts, "done_at": now,
                                                  "claim_token": None, "lease_until": None}))


def forget_step(engine: Engine, step: str, token: str | None = None) -> None:
    """Drop a step whose message is gone (e.g. a thread parent deleted in Slack) or that Slack refused,
    so it can be posted anew; with `token`, only while it is held with that claim."""
    c = steps_table.c
    with engine.begin() as conn:
        conn.execute(sa.delete(steps_table).where(c.step == step, sa.true() if token is None else
                                                  c.claim_token == token))


# ------------------------------------------------------------------------ feedback


def add_feedback(engine: Engine, rule_id: str, episode_id: int, user_id: str, verdict: str, at: int) -> bool:
    """Store one user's verdict on an episode; returns False when it was already stored."""
    c = feedback_table.c
    with engine.begin() as conn:
        ins = _insert(conn, feedback_table)
        stmt = ins.values(rule_id=rule_id, episode_id=episode_id, user_id=user_id, verdict=verdict, at=at)
        res = conn.execute(stmt.on_conflict_do_nothing(index_elements=[c.episode_id, c.user_id, c.verdict])
                           .returning(c.id))
        return bool(res.all())


REPLAY_WINDOW = 300  # seconds either side of now that a signed request's timestamp may be (bolt's check)


def first_time_seen(engine: Engine, key: str, request_ts: int, now: int) -> bool:
    """Record a signed request as handled; False when it was handled before (a replay).

    One INSERT ... ON CONFLICT DO NOTHING, so two replicas given the same request agree on which
    one handles it. Rows of requests whose timestamp is outside the signature check's window
    (they could not be verified again anyway) are pruned on the way: the table stays as small as
    a few minutes of traffic."""
    c = requests_seen_table.c
    with engine.begin() as conn:
        conn.execute(sa.delete(requests_seen_table).where(c.request_ts < now - REPLAY_WINDOW - 60))
        res = conn.execute(_insert(conn, requests_seen_table).values(key=key, request_ts=request_ts, seen_at=now)
                           .on_conflict_do_nothing(index_elements=[c.key]).returning(c.key))
        return bool(res.all())


def episode_feedback(engine: Engine, episode_id: int) -> list[tuple[str, str, int]]:
    """(user_id, verdict, at) for an episode, oldest first."""
    c = feedback_table.c
    q = sa.select(c.user_id, c.verdict, c.at).where(c.episode_id == episode_id).order_by(c.at, c.id)
    with engine.connect() as conn:
        return [(r.user_id, r.verdict, int(r.at)) for r in conn.execute(q)]


def feedback_by_rule(engine: Engine, verdict: str = NOT_USEFUL, since: int | None = None) -> dict[str, int]:
    """How many episodes of each rule got `verdict` (counted once per episode), newest rules first by count."""
    c = feedback_table.c
    q = sa.select(c.rule_id, sa.func.count(sa.distinct(c.episode_id))).where(c.verdict == verdict)
    if since is not None:
        q = q.where(c.at >= since)
    with engine.connect() as conn:
        rows = conn.execute(q.group_by(c.rule_id)).all()
    return dict(sorted(((r[0], int(r[1])) for r in rows), key=lambda kv: (-kv[1], kv[0])))


@dataclass(frozen=True)
class RulePrecision:
    """How useful a rule's alerts were: `alerts` notified episodes, `not_useful` of them marked "Not
    useful" (by anyone, counted once per episode); precision = the share not marked."""

    rule_id: str
    alerts: int
    not_useful: int

    @property
    def precision(self) -> float | None:
        return None if self.alerts == 0 else max(0.0, 1.0 - self.not_useful / self.alerts)


def rule_precision(engine: Engine, since: int | None = None, until: int | None = None) -> list[RulePrecision]:
    """Per rule: episodes notified (first notified) in [since, until) and how many of them got "Not
    useful". Worst precision first, then most alerts."""
    e, f = episodes_table.c, feedback_table.c
    q = sa.select(e.rule_id, sa.func.count()).where(e.fired_at.is_not(None), e.last_notified_at.is_not(None))
    if since is not None:
        q = q.where(e.fired_at >= since)
    if until is not None:
        q = q.where(e.fired_at < until)
    marked = sa.select(f.episode_id).where(f.verdict == NOT_USEFUL)
    nq = q.where(e.id.in_(marked))
    with engine.connect() as conn:
        alerts = {r[0]: int(r[1]) for r in conn.execute(q.group_by(e.rule_id))}
        bad = {r[0]: int(r[1]) for r in conn.execute(nq.group_by(e.rule_id))}
    rows = [RulePrecision(rule, n, bad.get(rule, 0)) for rule, n in alerts.items()]
    return sorted(rows, key=lambda r: (r.precision if r.precision is not None else 2.0, -r.alerts, r.rule_id))


# -------------------------------------------------------------------------- digest


@dataclass(frozen=True)
class DigestItem:
    id: int
    item_key: str
    owner_email: str
    alert: dict[str, Any]
    created_at: int


def queue_digest_item(engine: Engine, item_key: str, owner_email: str, alert: Mapping[str, Any], now: int) -> bool:
    """Hold an alert for the owner's digest; idempotent per item_key. Returns whether it was new."""
    c = digest_table.c
    payload = json_safe(dict(alert), f"digest item {item_key!r}")
    with engine.begin() as conn:
        ins = _insert(conn, digest_table)
        res = conn.execute(ins.values(item_key=item_key, owner_email=owner_email.strip().lower(), alert=payload,
                                      created_at=now).on_conflict_do_nothing(index_elements=[c.item_key])
                           .returning(c.id))
        return bool(res.all())


def digest_owners(engine: Engine) -> list[str]:
    """Owners with held-back items not yet sent."""
    c = digest_table.c
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(
            sa.select(c.owner_email).where(c.sent_at.is_(None)).distinct().order_by(c.owner_email))]


def take_digest(engine: Engine, owner_email: str, digest_key: str, add_new: bool = True) -> list[DigestItem]:
    """Assign the owner's unassigned unsent items to `digest_key` (unless not `add_new`) and return
    every item of that digest.

    A retry of a digest whose post may have happened must pass add_new=False: the message that
    may be in Slack shows exactly its items, and newer ones wait for the next digest (taken into a
    posted digest they would be marked sent without ever being shown).
    """
    c = digest_table.c
    owner = owner_email.strip().lower()
    with write_transaction(engine) as conn:
        if add_new:
            conn.execute(sa.update(digest_table).where(c.owner_email == owner, c.sent_at.is_(None),
                                                       c.digest_key.is_(None)).values(digest_key=digest_key))
        rows = conn.execute(sa.select(digest_table).where(c.digest_key == digest_key).order_by(c.created_at, c.id))
        return [DigestItem(int(r.id), r.item_key, r.owner_email, dict(r.alert or {}), int(r.created_at))
                for r in rows]


def open_digest_key(engine: Engine, owner_email: str) -> str | None:
    """A digest key already assigned to the owner's items but not sent (a retry after a failure)."""
    c = digest_table.c
    q = (sa.select(c.digest_key).where(c.owner_email == owner_email.strip().lower(), c.sent_at.is_(None),
                                       c.digest_key.is_not(None)).order_by(c.id).limit(1))
    with engine.connect() as conn:
        r = conn.execute(q).first()
    return None if r is None else str(r[0])


def mark_digest_sent(engine: Engine, digest_key: str, now: int) -> int:
    c = digest_table.c
    with engine.begin() as conn:
        return int(conn.execute(sa.update(digest_table).where(c.digest_key == digest_key)
                                .values(sent_at=now)).rowcount)


def last_digest_sent_at(engine: Engine, owner_email: str) -> int | None:
    c = digest_table.c
    with engine.connect() as conn:
        r = conn.execute(sa.select(sa.func.max(c.sent_at)).where(
            c.owner_email == owner_email.strip().lower())).scalar_one_or_none()
    return _opt(r)


@dataclass(frozen=True)
class OpenAlert:
    """An open (firing) alert of an account someone owns, for their morning digest."""

    episode_id: int
    account_id: str
    account_name: str
    rule_id: str
    metric: str
    severity: str
    message: str
    fired_at: int
    utilization: float  # usage / quota of the metric (the explanation's, else value / the account's quota); 0 unknown
    acknowledged: bool
    arr: float = 0.0  # the account's annual recurring revenue (accounts.arr, from the CRM or the CSV); 0 unknown


def owner_open_alerts(engine: Engine, owner_email: str) -> list[OpenAlert]:
    """The firing, not snoozed-for-good alerts of the accounts `owner_email` owns (any order)."""
    from storage.accounts import accounts_table

    e, a = episodes_table.c, accounts_table.c
    q = (sa.select(e.id, e.account_id, a.name, a.quotas, e.rule_id, e.metric, e.severity, e.last_explanation,
                   e.fired_at, e.acknowledged_by, a.arr)
         .select_from(episodes_table.join(accounts_table, e.account_id == a.id))
         .where(a.owner_email == owner_email.strip().lower(), e.status == "firing", e.fired_at.is_not(None)))
    out = []
    with engine.connect() as conn:
        for r in conn.execute(q):
            ex = dict(r.last_explanation or {})
            quotas = r.quotas if isinstance(r.quotas, dict) else {}
            util = (ex.get("details") or {}).get("utilization")
            if not isinstance(util, int | float):
                value, quota = ex.get("value"), quotas.get(r.metric)
                util = value / quota if isinstance(value, int | float) and isinstance(quota, int | float) and quota else 0.0
            out.append(OpenAlert(int(r.id), r.account_id, r.name or r.account_id, r.rule_id, r.metric, r.severity,
                                 str(ex.get("message") or r.rule_id), int(r.fired_at), float(util),
                                 bool(r.acknowledged_by), float(r.arr or 0.0)))
    return out


def unacknowledged_alerts(engine: Engine, fired_before: int, severities: Sequence[str],
                          now: int) -> list[tuple[EpisodeState, str]]:
    """(episode, owner email) of the firing alerts of these severities that fired at or before
    `fired_before`, were notified, are not acknowledged and not snoozed at `now`: due for escalation."""
    from storage.accounts import accounts_table

    e, a = episodes_table.c, accounts_table.c
    q = (sa.select(episodes_table, a.owner_email.label("owner_email_"))
         .select_from(episodes_table.join(accounts_table, e.account_id == a.id))
         .where(e.status == "firing", e.fired_at.is_not(None), e.fired_at <= fired_before,
                e.last_notified_at.is_not(None), e.acknowledged_by.is_(None), e.severity.in_(list(severities)),
                sa.or_(e.snoozed_until.is_(None), e.snoozed_until <= now), a.owner_email != "")
         .order_by(e.id))
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
    return [(state_from_row({k: v for k, v in r.items() if k != "owner_email_"}), str(r["owner_email_"]).lower())
            for r in rows]


def owners_with_open_alerts(engine: Engine) -> list[str]:
    """Account owners with at least one firing alert."""
    from storage.accounts import accounts_table

    e, a = episodes_table.c, accounts_table.c
    q = (sa.select(a.owner_email).select_from(episodes_table.join(accounts_table, e.account_id == a.id))
         .where(e.status == "firing", e.fired_at.is_not(None), a.owner_email != "").distinct())
    with engine.connect() as conn:
        return sorted(str(r[0]).lower() for r in conn.execute(q))


# ------------------------------------------------------------------ account snoozes


def snooze_account(engine: Engine, account_id: str, until: int, by: str, at: int) -> None:
    c = snoozes_table.c
    with engine.begin() as conn:
        ins = _insert(conn, snoozes_table)
        conn.execute(ins.values(account_id=account_id, until=until, snoozed_by=by, snoozed_at=at)
                     .on_conflict_do_update(index_elements=[c.account_id],
                                            set_={"until": until, "snoozed_by": by, "snoozed_at": at}))


def account_snoozed_until(engine: Engine, account_id: str, now: int) -> int | None:
    c = snoozes_table.c
    with engine.connect() as conn:
        r = conn.execute(sa.select(c.until).where(c.account_id == account_id, c.until > now)).first()
    return None if r is None else int(r[0])


def active_account_snoozes(engine: Engine, now: int) -> dict[str, int]:
    """account id -> snoozed until, for accounts snoozed at `now` (rules.lifecycle.advance's
    `snoozed_accounts`)."""
    c = snoozes_table.c
    with engine.connect() as conn:
        return {r.account_id: int(r.until) for r in conn.execute(sa.select(c.account_id, c.until)
                                                                   .where(c.until > now))}


# ------------------------------------------------------------------------ episodes


def episode_state(engine: Engine, episode_id: int) -> EpisodeState | None:
    """A stored episode (by row id) as the lifecycle's EpisodeState, episode_id set."""
    d = get_episode(engine, episode_id)
    return None if d is None else state_from_row(d)


def account_episodes(engine: Engine, account_ids: Sequence[str], open_only: bool = True) -> list[EpisodeState]:
    """The current episode per key of the given accounts (open ones only by default), newest first."""
    e = episodes_table.c
    if not account_ids:
        return []
    latest = (sa.select(sa.func.max(e.id)).where(e.account_id.in_(list(account_ids)))
              .group_by(e.rule_id, e.account_id, e.metric, e.discriminator))
    q = sa.select(episodes_table).where(e.id.in_(latest))
    if open_only:
        q = q.where(e.status.in_(["pending", "firing"]))
    with engine.connect() as conn:
        rows = [state_from_row(dict(r._mapping)) for r in conn.execute(q.order_by(e.id.desc()))]
    return rows


# -------------------------------------------------------------------------- outbox


def outbox_row_state(engine: Engine, idempotency_key: str, kinds: Sequence[str]) -> tuple[str, int] | None:
    """(status, next_attempt_at) of a notifier's outbox row by key (read-only; e.g. has an alert's first
    message been delivered yet?); `kinds`: the notifier's outbox kinds."""
    c = outbox_table.c
    with engine.connect() as conn:
        r = conn.execute(sa.select(c.status, c.next_attempt_at)
                         .where(c.idempotency_key == idempotency_key, c.kind.in_(list(kinds)))).first()
    return None if r is None else (str(r.status), int(r.next_attempt_at))


def assign_key(episode_id: int) -> str:
    """The outbox key of an episode's "Assign to CSM" row (integrations.slack.assign): one per episode."""
    return f"slack-assign:{int(episode_id)}"


def outbox_row_payload(engine: Engine, idempotency_key: str) -> dict[str, Any] | None:
    """The payload of the outbox row with this key (any kind), None when there is none."""
    c = outbox_table.c
    with engine.connect() as conn:
        r = conn.execute(sa.select(c.payload).where(c.idempotency_key == idempotency_key)).first()
    return None if r is None else dict(r.payload or {})
