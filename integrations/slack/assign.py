""""Assign to CSM" and escalations as outbox rows: a copy of an alert for someone else, once per episode.

The click (integrations.slack.actions.EpisodeActions.assign_csm) records the assignment on the
episode (who assigned it to whom) and queues ONE row of kind ASSIGN_KIND keyed by the episode
(`slack-assign:<episode id>`: a second click or a retried request adds nothing). `SlackAssignments`
carries it out: the episode's alert, as its first message showed it, is posted to the CSM's DM
with a line saying who assigned it, exactly once (one delivery step), and kept as one of the
episode's parent messages, so the buttons and later updates reach it like the owner's copy.
When Slack fails the row stays queued and the service's deliver job retries it.

Escalation ([slack.attention] escalate_after, off by default): an alert of a severity in
`escalate_severities` still firing, unacknowledged and not snoozed `escalate_after` after it fired
is sent to the owner's manager (`managers`, else `escalate_to`: an email or a channel), exactly
once per episode (row kind ESCALATE_KIND, key `slack-escalate:<episode id>`), and the episode's
history records it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine

from integrations.notice import AlertNotice
from integrations.notifier import DeliveryError
from integrations.slack.blocks import escape_mrkdwn
from integrations.slack.config import AttentionConfig
from integrations.slack.notifier import SlackNotifier
from integrations.slack.render import SlackMessageContent, mention
from integrations.slack.routing import Destination
from rules.model import DAY
from storage import slack as store
from storage.db import write_transaction
from storage.episodes import get_episode, record_action
from storage.outbox import OutboxItem, enqueue
from storage.slack import assign_key

log = logging.getLogger(__name__)

ASSIGN_KIND = "slack:assign"
ESCALATE_KIND = "slack:escalate"


def escalate_key(episode_id: int) -> str:
    return f"slack-escalate:{int(episode_id)}"


def queue_escalations(engine: Engine, cfg: AttentionConfig, now: int) -> int:
    """Queue the escalation of every alert now due for one (see the module docstring); returns how
    many were new (an episode already escalated is not again)."""
    if not cfg.escalate_after:
        return 0
    n = 0
    for state, owner in store.unacknowledged_alerts(engine, now - cfg.escalate_after, cfg.escalate_severities, now):
        target = cfg.managers.get(owner) or cfg.escalate_to
        if not target:
            log.info("alert episode %s of %s is due for escalation but no manager is set ([slack.attention] "
                     "managers / escalate_to)", state.episode_id, owner)
            continue
        days = max(1, (now - int(state.fired_at or now)) // DAY)
        item = OutboxItem(escalate_key(int(state.episode_id or 0)), ESCALATE_KIND,
                          {"episode_id": int(state.episode_id or 0), "target": target, "owner": owner, "days": days},
                          not_before=now)
        with write_transaction(engine) as conn:
            new = enqueue(conn, [item], now) == 1
        if new:
            record_action(engine, state, "escalated", now, actor="usagebot",
                          reason=f"not acknowledged after {days} day(s): escalated to {target}")
            n += 1
    return n


def assign_item(episode_id: int, csm_email: str, by: str, at: int) -> OutboxItem:
    return OutboxItem(assign_key(episode_id), ASSIGN_KIND,
                      {"episode_id": int(episode_id), "csm_email": csm_email, "by": by, "at": int(at)}, not_before=at)


class SlackAssignments:
    """The outlet of ASSIGN_KIND rows (bot.pipeline.deliver_rows)."""

    name = "slack-assign"
    kinds = (ASSIGN_KIND, ESCALATE_KIND)

    def __init__(self, notifier: SlackNotifier) -> None:
        self.notifier = notifier

    def handle(self, payload: Mapping[str, Any]) -> None:
        n = self.notifier
        eid = payload.get("episode_id")
        escalation = "target" in payload
        target = str(payload.get("target") or payload.get("csm_email") or "")
        if not isinstance(eid, int) or isinstance(eid, bool) or not target:
            raise DeliveryError(f"an alert copy row without an episode or a recipient: {dict(payload)!r}",
                                permanent=True)
        episode = get_episode(n.engine, eid)
        messages = store.episode_messages(n.engine, eid)
        if episode is None or not messages:
            raise DeliveryError(f"episode {eid} has no alert message to send on", permanent=True)
        first = messages[0]
        notice = AlertNotice.from_json(first.alert)
        account = escape_mrkdwn(notice.account_name or notice.account)
        if escalation:
            line = (f"⏫ Escalated to you: this {notice.severity} alert on {account} has not been acknowledged "
                    f"for {int(payload.get('days') or 1)} day(s) (owner {escape_mrkdwn(str(payload.get('owner')))}).")
        else:
            line = f"🤝 {mention(str(payload.get('by') or ''))} assigned this alert to you (account {account})."
        if "@" in target:
            channel, destination = n.directory.dm_channel(target), f"dm:{target}"
            if channel is None:
                raise DeliveryError(f"{target} is not on Slack (no user with this email)", permanent=True)
        else:
            channel, destination = n.directory.channel_id(target), f"channel:{target}"
        view = n._view(episode, first.last_event, first.last_event_at)  # noqa: SLF001
        content = n.renderer.alert(notice, view, n._owner_mention(notice), n.interactive)  # noqa: SLF001
        content = SlackMessageContent(f"{line} {content.text}",
                                      [{"type": "section", "text": {"type": "mrkdwn", "text": line}}, *content.blocks])
        key = escalate_key(eid) if escalation else assign_key(eid)
        where = Destination("dm" if "@" in target else "channel", target)
        cid, ts = n.post_parent(where, f"{key}|{destination}", channel, content)  # a stale cached id: once more
        if not any(m.destination == destination for m in messages):
            store.save_message(n.engine, eid, destination, cid, ts, first.alert, first.last_event, first.last_event_at)
