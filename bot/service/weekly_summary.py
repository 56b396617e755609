"""The weekly admin summary: how useful each rule's alerts were last week, and the alert load.

One admin notice per week (Monday 00:00 UTC to Monday), queued through the outbox under the key
`weekly-summary:<monday>`: the service's freshness job checks for it every minute, replicas and
restarts included, and the key makes it one message a week (storage.outbox: INSERT ... ON CONFLICT DO NOTHING). It says, per
rule, the alerts notified, how many were marked "Not useful" in Slack and the precision (the share
not marked; `usagebot slack feedback` shows the same figure over any window), worst first; and
the alerts per owner and day (the busiest owners), the figure the attention budget bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.service.notices import notice_items
from integrations.notice import AlertNotice, admin_notice
from rules.model import DAY
from rules.periods import iso
from storage.accounts import accounts_table
from storage.episodes import episodes_table
from storage.outbox import enqueue
from storage.slack import RulePrecision, rule_precision

WEEK = 7 * DAY
MONDAY_OFFSET = 4 * DAY  # 1970-01-01 was a Thursday: Mondays are 4 days after multiples of a week
MAX_RULES = 15  # rules listed (worst precision first); the message stays well under Slack's 3,000 characters
MAX_OWNERS = 5


def week_start(now: int) -> int:
    """Monday 00:00 UTC of the week containing `now`."""
    return (now - MONDAY_OFFSET) // WEEK * WEEK + MONDAY_OFFSET


def summary_key(this_monday: int) -> str:
    """The outbox key of the summary of the week before `this_monday`."""
    return f"weekly-summary:{iso(this_monday - WEEK)[:10]}"


def owner_load(engine: Engine, since: int, until: int) -> list[tuple[str, int]]:
    """(owner email, alerts notified in [since, until)) per account owner, busiest first."""
    e, a = episodes_table.c, accounts_table.c
    q = (sa.select(a.owner_email, sa.func.count()).select_from(episodes_table.join(
        accounts_table, e.account_id == a.id)).where(e.fired_at >= since, e.fired_at < until,
                                                     e.last_notified_at.is_not(None), a.owner_email != "")
         .group_by(a.owner_email))
    with engine.connect() as conn:
        rows = [(str(r[0]), int(r[1])) for r in conn.execute(q)]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def summary_text(rules: Sequence[RulePrecision], owners: Sequence[tuple[str, int]], start: int) -> str:
    total = sum(r.alerts for r in rules)
    marked = sum(r.not_useful for r in rules)
    lines = [f"Week of {iso(start)[:10]}: {total} alert(s) from {len(rules)} rule(s); {marked} marked "
             f"\"Not useful\"" + (f" (precision {1 - marked / total:.0%})." if total else ".")]
    for r in list(rules)[:MAX_RULES]:
        p = "-" if r.precision is None else f"{r.precision:.0%}"
        lines.append(f"• {r.rule_id}: {r.alerts} alert(s), {r.not_useful} not useful, precision {p}")
    if len(rules) > MAX_RULES:
        lines.append(f"… and {len(rules) - MAX_RULES} more rule(s): `usagebot slack feedback`")
    if owners:
        busiest = ", ".join(f"{o} {n / 7:.1f}/day" for o, n in list(owners)[:MAX_OWNERS])
        lines.append(f"Alerts per owner and day: {busiest}")
    return "\n".join(lines)


def weekly_summary(engine: Engine, now: int, channel: str | None) -> AlertNotice:
    """The summary of the last full week before `now` (its key names that week)."""
    end = week_start(now)
    start = end - WEEK
    text = summary_text(rule_precision(engine, since=start, until=end), owner_load(engine, start, end), start)
    return admin_notice("weekly_summary", summary_key(end), "weekly-summary", "usagebot",
                        "weekly summary", text, now, channel, severity="info", kind="summary",
                        description="weekly admin summary")


def queue_weekly_summary(engine: Engine, now: int, channel: str | None, notifiers: Sequence[str]) -> int:
    """Queue last week's summary once per notifier (a second call the same week adds nothing; a week
    without any alert has no summary); returns how many rows were new."""
    end = week_start(now)
    if not rule_precision(engine, since=end - WEEK, until=end):
        return 0
    return enqueue(engine, notice_items(weekly_summary(engine, now, channel), now, notifiers), now)
