""""Assign to CSM" as an outbox row: the account's CSM gets the alert in a DM, once per episode.

The click (integrations.slack.actions.EpisodeActions.assign_csm) records the assignment on the
episode (who assigned it to whom) and queues ONE row of kind ASSIGN_KIND keyed by the episode
(`slack-assign:<episode id>`: a second click or a retried request adds nothing). `SlackAssignments`
carries it out: the episode's alert, as its first message showed it, is posted to the CSM's DM
with a line saying who assigned it, exactly once (one delivery step), and kept as one of the
episode's parent messages, so the buttons and later updates reach it like the owner's copy.
When Slack fails the row stays queued and the service's deliver job retries it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from integrations.notice import AlertNotice
from integrations.notifier import DeliveryError
from integrations.slack.blocks import escape_mrkdwn
from integrations.slack.notifier import SlackNotifier
from integrations.slack.render import SlackMessageContent, mention
from storage import slack as store
from storage.episodes import get_episode
from storage.outbox import OutboxItem
from storage.slack import assign_key

ASSIGN_KIND = "slack:assign"


def assign_item(episode_id: int, csm_email: str, by: str, at: int) -> OutboxItem:
    return OutboxItem(assign_key(episode_id), ASSIGN_KIND,
                      {"episode_id": int(episode_id), "csm_email": csm_email, "by": by, "at": int(at)}, not_before=at)


class SlackAssignments:
    """The outlet of ASSIGN_KIND rows (bot.pipeline.deliver_rows)."""

    name = "slack-assign"
    kinds = (ASSIGN_KIND,)

    def __init__(self, notifier: SlackNotifier) -> None:
        self.notifier = notifier

    def handle(self, payload: Mapping[str, Any]) -> None:
        n = self.notifier
        eid, email, by = payload.get("episode_id"), str(payload.get("csm_email") or ""), str(payload.get("by") or "")
        if not isinstance(eid, int) or isinstance(eid, bool) or not email:
            raise DeliveryError(f"an assignment row without an episode or a CSM: {dict(payload)!r}", permanent=True)
        episode = get_episode(n.engine, eid)
        messages = store.episode_messages(n.engine, eid)
        if episode is None or not messages:
            raise DeliveryError(f"episode {eid} has no alert message to assign", permanent=True)
        channel = n.directory.dm_channel(email)
        if channel is None:
            raise DeliveryError(f"the CSM {email} is not on Slack (no user with this email)", permanent=True)
        first = messages[0]
        notice = AlertNotice.from_json(first.alert)
        view = n._view(episode, first.last_event, first.last_event_at)  # noqa: SLF001
        content = n.renderer.alert(notice, view, n._owner_mention(notice), n.interactive)  # noqa: SLF001
        line = f"🤝 {mention(by)} assigned this alert to you (account {escape_mrkdwn(notice.account_name or notice.account)})."
        content = SlackMessageContent(f"{line} {content.text}",
                                      [{"type": "section", "text": {"type": "mrkdwn", "text": line}}, *content.blocks])
        destination = f"dm:{email}"
        cid, ts = n.poster.post_once(f"{assign_key(eid)}|{destination}", channel, None, content)
        if not any(m.destination == destination for m in messages):
            store.save_message(n.engine, eid, destination, cid, ts, first.alert, first.last_event, first.last_event_at)
