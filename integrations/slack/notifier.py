"""The Slack notifier: delivers outbox alert records as threads, one per alert episode.

- "fired": a parent message in each destination (owner DM, channels); its channel/ts are kept
  (storage.slack messages, and the episode's slack_channel/slack_ts for the first one); the
  episode's chart goes into its thread (integrations.slack.charts).
- "renotified" / "resolved": a reply in each thread, then chat.update of the parent so it shows
  the state. A quiet resolution (a billing period ended, an opportunity passed) only updates
  the parents. A follow-up waits (RetryLater) while the episode's first message is still queued, so
  the thread never starts with a follow-up.
- Owner DMs may go to a daily digest instead ([slack.digest]); account snoozes (/usage snooze)
  hold back new alerts for the account.
- Admin notices (bot.alerts.admin_notice: stale sources, rejected files, first-run summaries, cohort
  events, refused reloads): one message in the admin channel (slack/notice.json.j2), no thread.
- Posting is exactly-once (integrations.slack.delivery); errors carry `retry_after` / `permanent`
  for bot.pipeline.deliver_outbox.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy.engine import Engine

from integrations.slack.api import SlackApi
from integrations.slack.charts import ChartAttacher
from integrations.slack.config import SlackConfig
from integrations.slack.delivery import Poster
from integrations.slack.errors import PermanentSlackError, RetryLater
from integrations.slack.lookups import SlackDirectory
from integrations.slack.render import EpisodeView, SlackRenderer, parse_iso
from integrations.slack.routing import Destination, destinations, fallback_destination
from rules.periods import iso
from storage import slack as store
from storage.episodes import find_episode, get_episode, set_slack_message
from storage.outbox import DEFAULT_LEASE, outbox_kinds

log = logging.getLogger(__name__)

EVENTS = ("fired", "renotified", "resolved")
FIRST_POST_WAIT = 30  # seconds between checks while an episode's first message is still queued
UPDATE_ERRORS = ("message_not_found", "cant_update_message", "edit_window_closed", "channel_not_found")


def delivery_id(alert: Mapping[str, Any]) -> str:
    """The outbox idempotency key of an alert record (bot.alerts.idempotency_key)."""
    at = parse_iso(alert.get("at"))
    return (f"notify:{alert.get('rule')}:{alert.get('account')}:{alert.get('metric')}:"
            f"{alert.get('discriminator', '')}:{alert.get('event')}:{at}")


def episode_key(alert: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (str(alert.get("rule")), str(alert.get("account")), str(alert.get("metric")),
            str(alert.get("discriminator") or ""))


class SlackNotifier:
    name = "slack"  # its outbox rows: storage.outbox.outbox_kinds("slack")

    def __init__(self, config: SlackConfig, engine: Engine, api: SlackApi | None = None,
                 clock: Callable[[], int] = lambda: int(time.time()), interactive: bool | None = None,
                 lease: int = DEFAULT_LEASE) -> None:
        self.config = config
        self.engine = engine
        self.api = api or SlackApi.from_config(config)
        self.clock = clock
        self.directory = SlackDirectory(self.api, engine, config, clock)
        self.renderer = SlackRenderer(config)
        self.poster = Poster(self.api, engine, clock, lease=lease)
        self.charts = ChartAttacher(self.api, engine, clock, lease=lease)  # the chart in each alert's thread
        self.interactive = config.interactive_mode is not None if interactive is None else interactive

    # -------------------------------------------------------------- deliver

    def deliver(self, alert: Mapping[str, Any]) -> None:
        event = str(alert.get("event"))
        if event not in EVENTS:
            self._deliver_notice(alert)
            return
        now = self.clock()
        if event != "resolved":
            until = store.account_snoozed_until(self.engine, str(alert.get("account")), now)
            if until is not None:
                log.info("account %s is snoozed until %s: %s alert of rule %s not posted",
                         alert.get("account"), iso(until), event, alert.get("rule"))
                return
        episode = find_episode(self.engine, episode_key(alert), started_at=parse_iso(alert.get("started_at")))
        if alert.get("quiet"):  # closed without telling anyone: only the parent messages show the new state
            if episode is not None:
                self.refresh_episode(int(episode["id"]))
            return
        if event != "fired":
            self._wait_for_first_post(alert, now)
        tried: list[Destination] = []
        problems: list[PermanentSlackError] = []
        delivered = False
        queue = destinations(alert, self.config)
        while queue:
            d = queue.pop(0)
            tried.append(d)
            try:
                delivered = self._deliver_to(d, alert, episode, now) or delivered
            except PermanentSlackError as exc:
                log.error("alert %s to %s: %s", delivery_id(alert), d.key, exc)
                problems.append(exc)
            if not queue and not delivered:
                fb = fallback_destination(self.config, tried)
                if fb is not None:
                    queue.append(fb)
        if problems:
            raise PermanentSlackError("; ".join(str(p) for p in problems), problems[0].error)
        if not delivered:
            raise PermanentSlackError(
                f"alert {delivery_id(alert)}: no Slack destination: the owner "
                f"{alert.get('owner_email') or '(none)'} is not on Slack and no channel is routed; set "
                "[slack] default_channel or the rule's routing.channels")

    def _deliver_notice(self, alert: Mapping[str, Any]) -> None:
        """An admin notice (never routed to an owner): one post in each of its channels, else in the
        default channel; exactly once like every post."""
        channels = [str(c) for c in (alert.get("routing") or {}).get("channels") or [] if c]
        if not channels and self.config.default_channel:
            channels = [self.config.default_channel]
        if not channels:
            raise PermanentSlackError(
                f"notice {delivery_id(alert)}: no Slack channel: set [service] admin_channel (or [slack] "
                "default_channel)")
        content = self.renderer.notice(alert)
        for name in channels:
            self.poster.post_once(f"{delivery_id(alert)}|channel:{name}", self.directory.channel_id(name), None,
                                  content)

    def _wait_for_first_post(self, alert: Mapping[str, Any], now: int) -> None:
        fired_at = parse_iso(alert.get("fired_at"))
        if fired_at is None:
            return
        first = delivery_id({**alert, "event": "fired", "at": fired_at})
        state = store.outbox_row_state(self.engine, first, outbox_kinds(self.name))
        if state is not None and state[0] in ("pending", "failed"):
            raise RetryLater(f"alert {delivery_id(alert)}: waiting for the episode's first message ({first})",
                             max(FIRST_POST_WAIT, state[1] - now + 1))

    def _owner_mention(self, alert: Mapping[str, Any]) -> str:
        email = str(alert.get("owner_email") or "")
        if not email:
            return ""
        uid = self.directory.user_id(email)
        return f"<@{uid}>" if uid else email.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    def _deliver_to(self, d: Destination, alert: Mapping[str, Any], episode: Mapping[str, Any] | None,
                    now: int) -> bool:
        """Deliver to one destination; False when it cannot take the alert (owner not on Slack)."""
        did = delivery_id(alert)
        if d.kind == "dm":
            if self.directory.user_id(d.target) is None:
                return False  # the owner is not on Slack
            dg = self.config.digest
            if dg.enabled and str(alert.get("severity")) not in dg.immediate:
                store.queue_digest_item(self.engine, f"{did}|{d.key}", d.target, alert, now)
                return True
            channel = self.directory.dm_channel(d.target)
            if channel is None:
                return False
        else:
            channel = self.directory.channel_id(d.target)
        eid = int(episode["id"]) if episode is not None else None
        event = str(alert["event"])
        at = parse_iso(alert.get("at")) or now
        existing = None
        if eid is not None:
            existing = next((m for m in store.episode_messages(self.engine, eid) if m.destination == d.key), None)
        owner = self._owner_mention(alert)
        step = f"{did}|{d.key}"
        if event == "fired" or existing is None:
            view = self._view(episode, event, at)
            content = self.renderer.alert(alert, view, owner, self.interactive)
            cid, ts = self.poster.post_once(step, channel, None, content)
            if eid is not None:
                store.save_message(self.engine, eid, d.key, cid, ts, alert, event, at)
                current = get_episode(self.engine, eid)
                if current is not None and not current.get("slack_ts"):  # the first destination's message
                    set_slack_message(self.engine, eid, cid, ts)
            self.charts.attach(step, cid, ts, eid, str(alert.get("account_name") or ""))
            return True
        view = self._view(episode, event, at)
        content = self.renderer.followup(alert, view, owner)
        try:
            self.poster.post_once(step, existing.channel, existing.ts, content)
        except PermanentSlackError as exc:
            if exc.error != "thread_not_found":
                raise
            log.warning("thread of episode %s in %s is gone; posting a new parent message", eid, d.key)
            content = self.renderer.alert(alert, view, owner, self.interactive)
            cid, ts = self.poster.post_once(f"{step}|new-parent", channel, None, content)
            store.save_message(self.engine, eid, d.key, cid, ts, alert, event, at)  # type: ignore[arg-type]
            return True
        store.note_message_event(self.engine, existing.id, event, at)
        fresh = get_episode(self.engine, existing.episode_id)
        if fresh is not None:
            self.refresh_message(fresh, replace(existing, last_event=event, last_event_at=at))
        return True

    # ------------------------------------------------------- parent messages

    def _view(self, episode: Mapping[str, Any] | None, event: str, at: int,
              last_event: str | None = None, last_event_at: int | None = None) -> EpisodeView:
        if episode is None:
            return EpisodeView(None, "resolved" if event == "resolved" else "firing", event, at, now=self.clock())
        eid = int(episode["id"])
        feedback = store.episode_feedback(self.engine, eid)
        return EpisodeView(
            episode_id=eid, status=str(episode["status"]), last_event=last_event or event,
            last_event_at=last_event_at if last_event_at is not None else at,
            acknowledged_by=episode.get("acknowledged_by"), acknowledged_at=episode.get("acknowledged_at"),
            snoozed_until=episode.get("snoozed_until"), resolved_at=episode.get("resolved_at"),
            not_useful_by=tuple(dict.fromkeys(u for u, v, _ in feedback if v == store.NOT_USEFUL)),
            now=self.clock(),
        )

    def refresh_episode(self, episode_id: int) -> int:
        """chat.update every parent message of an episode to show its current state; returns how many."""
        episode = get_episode(self.engine, episode_id)
        if episode is None:
            return 0
        return sum(self.refresh_message(episode, m) for m in store.episode_messages(self.engine, episode_id))

    def refresh_message(self, episode: Mapping[str, Any], m: store.EpisodeMessage) -> bool:
        """chat.update one parent message from its stored alert and the episode's state."""
        view = self._view(episode, m.last_event, m.last_event_at)
        content = self.renderer.alert(m.alert, view, self._owner_mention(m.alert), self.interactive)
        try:
            self.api.update_message(m.channel, m.ts, content.text, content.blocks)
        except PermanentSlackError as exc:
            if exc.error not in UPDATE_ERRORS:
                raise
            log.warning("cannot update the message of episode %s in %s: %s", m.episode_id, m.destination, exc)
            return False
        return True


def actor_label(user_id: str, name: str | None = None) -> str:
    """How a Slack user is recorded as the actor of an action: "U123ABC (alice)"."""
    return f"{user_id} ({name})" if name else user_id

