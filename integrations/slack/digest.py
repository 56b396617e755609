"""Per-owner daily digests: owner DMs held back by the notifier ([slack.digest] enabled) are sent as
one message per owner at the configured local time. Crash-safe like every post (one delivery step
per digest; items are marked sent only after the post). A digest Slack refuses for good (the owner
left: user_disabled, a closed DM...) is given up once, logged as an error naming it, the owner and what
to do, instead of being tried again at every run of the digest job."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from integrations.slack.attention import quiet_until, ranked
from integrations.slack.errors import PermanentSlackError, SlackDeliveryError
from integrations.slack.notifier import SlackNotifier
from storage import slack as store

log = logging.getLogger(__name__)

# Slack's answers for a DM whose person is gone: the owner is taken as not on Slack (re-checked after
# [slack] negative_cache_ttl), so their next alerts go to the routed channels instead. Not
# channel_not_found / is_archived: those are about a DM channel id (a stored one gone stale is
# reopened, SlackDirectory.post_dm), not about the person
GONE_ERRORS = frozenset({"user_disabled", "user_not_found", "users_not_found", "cannot_dm_bot"})
# Slack's answers about this digest's own content: sending it again cannot help either. Any other
# permanent error (missing_scope, not_allowed_token_type...) is about the app's set-up, which an admin
# fixes: the digest waits for the next run instead of being dropped (one such error dropped every
# owner's digest in one run). A rejected token (SlackAuthError) is not a PermanentSlackError: it is
# logged and the digest kept as for any other delivery error.
GIVEN_UP_ERRORS = GONE_ERRORS | {"channel_not_found", "is_archived", "msg_too_long", "invalid_blocks", "no_text", "invalid_attachments",
                                 "too_many_attachments", "invalid_arguments"}


@dataclass
class DigestReport:
    sent: int = 0
    items: int = 0
    open_alerts: int = 0  # listed in morning digests
    given_up: int = 0  # refused by Slack for good (the owner left)
    errors: list[str] = field(default_factory=list)


def digest_time(now: int, hour: int, minute: int, timezone: str) -> tuple[int, str]:
    """(epoch of today's digest time in `timezone`, local date label) for the day containing `now`."""
    tz = ZoneInfo(timezone)
    local = datetime.fromtimestamp(now, UTC).astimezone(tz)
    at = datetime(local.year, local.month, local.day, hour, minute, tzinfo=tz)
    return int(at.timestamp()), local.strftime("%Y-%m-%d")


def send_due_digests(notifier: SlackNotifier, now: int) -> DigestReport:
    """Send every owner's digest that is due at `now` (and any digest whose send failed before).

    With [slack.attention] the digest time is each recipient's own local time (their Slack
    timezone), and with `morning_digest` every owner of an account with a firing alert gets one,
    listing those alerts most important first (integrations.slack.attention.ranked), with the
    alerts held back since the last digest."""
    cfg = notifier.config.digest
    att = notifier.config.attention
    engine = notifier.engine
    report = DigestReport()
    owners = set(store.digest_owners(engine))
    if att.morning_digest:
        owners |= set(store.owners_with_open_alerts(engine))
    for owner in sorted(owners):
        tz = notifier.directory.user_tz(owner, att.default_timezone) if att.active else cfg.timezone
        due_at, day = digest_time(now, cfg.hour, cfg.minute, tz)
        key = store.open_digest_key(engine, owner)
        if key is None:
            last = store.last_digest_sent_at(engine, owner)
            if now < due_at or (last is not None and last >= due_at):
                continue
            if att.quiet_hours and quiet_until(att, tz, now) is not None:
                continue  # a digest missed at its time (the service was down) is not sent at night:
                #           it goes when quiet hours end, or its items join the next morning's
            key = f"digest:{owner}:{day}"
        step = f"{key}|dm:{owner}"
        posted = store.get_step(engine, step)
        if posted is not None and posted.done and store.open_digest_key(engine, owner) != key:
            continue  # today's morning digest is out (it may have had no held items)
        # once its post may have happened, a digest keeps exactly its items (newer ones wait)
        pending = store.take_digest(engine, owner, key, add_new=posted is None)
        open_alerts = ranked(store.owner_open_alerts(engine, owner)) if att.morning_digest else []
        if not pending and not open_alerts:
            continue
        try:
            channel = notifier.directory.dm_channel(owner)
            if channel is None:
                log.warning("digest for %s: no Slack user with this email any more; dropping %d item(s)",
                            owner, len(pending))
                store.mark_digest_sent(engine, key, now)
                continue
            content = notifier.renderer.digest(owner, [i.alert for i in pending], key.rsplit(":", 1)[-1],
                                               open_alerts)
            notifier.post_to_owner(owner, step, channel, content)
        except PermanentSlackError as exc:
            report.errors.append(f"digest {key}: {exc}")
            if exc.error not in GIVEN_UP_ERRORS:
                log.error("digest %s for %s not sent: %s; Slack refuses the app itself (fix the token or its "
                          "scopes): the digest is tried again at the next run", key, owner, exc)
                continue
            # about the person or this digest: retrying cannot help, given up, said once
            report.given_up += 1
            log.error("digest %s for %s given up (%d item(s) not sent; they stay in /usage and the alert "
                      "history): %s; check that %s is still on Slack and the bot may DM them", key, owner,
                      len(pending), exc, owner)
            if exc.error in GONE_ERRORS:
                store.store_user(engine, owner, None, now)
            store.mark_digest_sent(engine, key, now)
            continue
        except SlackDeliveryError as exc:
            report.errors.append(f"digest {key}: {exc}")
            if exc.halts:  # the token itself: every other owner's digest would get the same answer
                log.error("digest %s not sent: %s; no more digests this run (they are kept for the next)", key, exc)
                break
            log.warning("digest %s not sent: %s", key, exc)
            continue
        store.mark_digest_sent(engine, key, now)
        report.sent += 1
        report.items += len(pending)
        report.open_alerts += len(open_alerts)
    return report
