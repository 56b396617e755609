"""A recipient's attention as a budget ([slack.attention]): what the notifier may DM a person now.

Every rule works in the recipient's own timezone: the `tz` Slack has for the user (users.lookupByEmail
/ users.info, cached with the user in slack_users), else `default_timezone`.
- Quiet hours ("20:00-08:00", local): a DM due in them is not posted; the outbox row is due again
  when they end (RetryLater), so held DMs go out then, in order, nothing lost.
- `max_dms_per_day`: at most that many new alert DMs (parent messages) per local day; an alert past
  it goes to the recipient's digest instead (storage.slack digest items; sent at the digest time,
  never dropped). Severities in `exempt_severities` (default critical) always go at once. Follow-ups
  in an alert's existing DM thread are no new DM and are never held back by the limit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from integrations.slack.config import AttentionConfig
from rules.model import SEVERITY_RANK
from storage.slack import OpenAlert


def local_midnight(now: int, tz: str) -> int:
    """The epoch of the start of the local day containing `now`."""
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(now, UTC).astimezone(zone)
    return int(datetime(local.year, local.month, local.day, tzinfo=zone).timestamp())


def quiet_until(cfg: AttentionConfig, tz: str, now: int) -> int | None:
    """When the quiet hours around `now` end (epoch), or None when `now` is not in quiet hours."""
    if cfg.quiet_start is None or cfg.quiet_end is None:
        return None
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(now, UTC).astimezone(zone)
    minute = local.hour * 60 + local.minute
    start, end = cfg.quiet_start, cfg.quiet_end
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if not inside:
        return None
    day = local.date() if minute < end else local.date() + timedelta(days=1)
    ends = datetime(day.year, day.month, day.day, end // 60, end % 60, tzinfo=zone)
    return int(ends.timestamp())


def over_daily_limit(cfg: AttentionConfig, severity: str, sent_today: int) -> bool:
    """Whether one more new alert DM of `severity` would exceed the recipient's daily limit."""
    return bool(cfg.max_dms_per_day) and severity not in cfg.exempt_severities and sent_today >= cfg.max_dms_per_day


def ranked(alerts: list[OpenAlert]) -> list[OpenAlert]:
    """An owner's open alerts, most important first: by revenue impact (the account's ARR, highest
    first; unknown counts as 0), then by severity (critical first), then by quota utilisation
    (highest first: closest to an overage or an upgrade), then the oldest first."""
    return sorted(alerts, key=lambda a: (-a.arr, -SEVERITY_RANK.get(a.severity, -1), -a.utilization, a.fired_at,
                                         a.episode_id))  # an unknown severity after info
