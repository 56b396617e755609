"""Slack message updates as outbox rows: a button (acknowledge, snooze, not useful) or a `/usage`
snooze changes an episode, and its parent messages must show it (chat.update).

The change is stored first (storage.episodes.record_action); then `update_item` queues one row of
kind UPDATE_KIND naming the episode, and `SlackUpdates` carries it out: every parent message of the
episode is set from the episode's state at delivery time (SlackNotifier.refresh_episode), so a retry,
or two rows for one episode, send the same content (idempotent). The app delivers the row at once
(bot.slack.app); if Slack fails (429, 5xx), the service's deliver job retries it like any other row.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from integrations.notifier import DeliveryError
from integrations.slack.notifier import SlackNotifier
from storage.outbox import OutboxItem

UPDATE_KIND = "slack:update"


def update_item(episode_id: int, at: int) -> OutboxItem:
    """The row asking for an episode's parent messages to be updated (one per change: a fresh key)."""
    key = f"slack-update:{episode_id}:{at}:{uuid.uuid4().hex[:12]}"
    return OutboxItem(key, UPDATE_KIND, {"episode_id": int(episode_id), "at": int(at)}, not_before=at)


class SlackUpdates:
    """The outlet of UPDATE_KIND rows (bot.service.pipeline.deliver_rows)."""

    name = "slack-updates"
    kinds = (UPDATE_KIND,)

    def __init__(self, notifier: SlackNotifier) -> None:
        self.notifier = notifier

    def handle(self, payload: Mapping[str, Any]) -> None:
        eid = payload.get("episode_id")
        if not isinstance(eid, int) or isinstance(eid, bool):
            raise DeliveryError(f"a Slack update row without an episode id: {dict(payload)!r}", permanent=True)
        self.notifier.refresh_episode(eid)
