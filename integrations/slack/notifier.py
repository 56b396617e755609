"""The Slack notifier: delivers alert notices (integrations.notice) as threads, one per alert episode.

- "fired": a parent message in each destination (owner DM, channels); its channel/ts are kept
  (storage.slack messages, and the episode's slack_channel/slack_ts for the first one); the
  episode's chart goes into its thread (integrations.slack.charts).
- "renotified" / "resolved": a reply in each thread, then chat.update of the parent so it shows
  the state. A quiet resolution (a billing period ended, an opportunity passed) only updates
  the parents. A follow-up waits (RetryLater) while the episode's first message is still queued, so
  the thread never starts with a follow-up.
- Owner DMs may go to a daily digest instead ([slack.digest]); account snoozes (/usage snooze)
  hold back new alerts for the account.
- Admin notices (audience "admin", bot.service.alerts.admin_notice: stale sources, rejected files, first-run
  summaries, cohort events, refused reloads): one message in the admin channel (slack/notice.json.j2),
  no thread.
- Posting is exactly-once (integrations.slack.delivery); errors are integrations.notifier.DeliveryError
  (`retry_after` / `permanent`) for bot.service.pipeline.deliver_outbox.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy.engine import Engine

from integrations.notice import AlertNotice
from integrations.slack.api import SlackApi
from integrations.slack.attention import local_midnight, over_daily_limit, quiet_until
from integrations.slack.charts import ChartAttacher
from integrations.slack.config import SlackConfig
from integrations.slack.delivery import Poster
from integrations.slack.errors import PermanentSlackError, RetryLater
from integrations.slack.lookups import SlackDirectory
from integrations.slack.render import EpisodeView, SlackMessageContent, SlackRenderer
from integrations.slack.routing import Destination, destinations, fallback_destination
from rules.periods import iso
from storage import slack as store
from storage.crm import load_tasks, task_click_key
from storage.episodes import find_episode, get_episode, set_slack_message
from storage.outbox import DEFAULT_LEASE, outbox_kinds

log = logging.getLogger(__name__)

FIRST_POST_WAIT = 30  # seconds between checks while an episode's first message is still queued
UPDATE_ERRORS = ("message_not_found", "cant_update_message", "edit_window_closed", "channel_not_found")


class _Quiet(Exception):
    """A DM held back by the recipient's quiet hours, until `until` (epoch)."""

    def __init__(self, until: int) -> None:
        super().__init__(f"quiet hours until {until}")
        self.until = until


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

    def deliver(self, notice: AlertNotice) -> None:
        notice = AlertNotice.of(notice)
        if notice.is_admin:
            self._deliver_notice(notice)
            return
        now = self.clock()
        if notice.event != "resolved":
            until = store.account_snoozed_until(self.engine, notice.account, now)
            if until is not None:
                log.info("account %s is snoozed until %s: %s alert of rule %s not posted",
                         notice.account, iso(until), notice.event, notice.rule)
                return
        episode = self._episode(notice)
        if notice.quiet:  # closed without telling anyone: only the parent messages show the new state
            if episode is not None:
                self.refresh_episode(int(episode["id"]))
            return
        if notice.event != "fired":
            self._wait_for_first_post(notice, now)
        tried: list[Destination] = []
        problems: list[PermanentSlackError] = []
        delivered = False
        held: list[tuple[str, int]] = []  # (recipient, quiet hours end) of DMs held back
        queue = destinations(notice, self.config)
        while queue:
            d = queue.pop(0)
            tried.append(d)
            try:
                delivered = self._deliver_to(d, notice, episode, now) or delivered
            except _Quiet as q:
                held.append((d.target, q.until))
                delivered = True
            except PermanentSlackError as exc:
                log.error("alert %s to %s: %s", notice.idempotency_key, d.key, exc)
                problems.append(exc)
            if not queue and not delivered:
                fb = fallback_destination(self.config, tried)
                if fb is not None:
                    queue.append(fb)
        if problems:
            raise PermanentSlackError("; ".join(str(p) for p in problems), problems[0].error)
        if held:  # the other destinations are done (each post is exactly-once): only the DM waits
            until = min(u for _, u in held)
            raise RetryLater(f"alert {notice.idempotency_key}: quiet hours of {held[0][0]} until {iso(until)}",
                             until - now)
        if not delivered:
            raise PermanentSlackError(
                f"alert {notice.idempotency_key}: no Slack destination: the owner "
                f"{notice.owner_email or '(none)'} is not on Slack and no channel is routed; set "
                "[slack] default_channel or the rule's routing.channels")

    def _held_back(self, d: Destination, notice: AlertNotice, episode: Mapping[str, Any] | None, now: int) -> bool:
        """The attention budget (integrations.slack.attention) for a DM: raises _Quiet in the
        recipient's quiet hours; True when the DM went to their digest (over the daily limit)."""
        att = self.config.attention
        tz = self.directory.user_tz(d.target, att.default_timezone)
        until = quiet_until(att, tz, now)
        if until is not None:
            raise _Quiet(until)
        if not att.max_dms_per_day:
            return False
        if episode is not None and any(m.destination == d.key
                                       for m in store.episode_messages(self.engine, int(episode["id"]))):
            return False  # a follow-up in the alert's DM thread is no new DM
        if not over_daily_limit(att, notice.severity, store.dms_since(self.engine, d.target, local_midnight(now, tz))):
            return False
        store.queue_digest_item(self.engine, f"{notice.idempotency_key}|{d.key}", d.target, notice.to_json(), now)
        log.info("%s has had %d alert DM(s) today: alert %s goes to their digest", d.target, att.max_dms_per_day,
                 notice.idempotency_key)
        return True

    def _episode(self, notice: AlertNotice) -> dict[str, Any] | None:
        """The notice's episode: by its id (notices name it), else, for a row queued by an older
        version, by its key and start."""
        if notice.episode_id is not None:
            return get_episode(self.engine, notice.episode_id)
        return find_episode(self.engine, notice.episode_key, started_at=notice.started_at or None)

    def _deliver_notice(self, notice: AlertNotice) -> None:
        """An admin notice (never routed to an owner): one post in each of its channels, else in the
        default channel; exactly once like every post."""
        channels = list(notice.routing.channels)
        if not channels and self.config.default_channel:
            channels = [self.config.default_channel]
        if not channels:
            raise PermanentSlackError(
                f"notice {notice.idempotency_key}: no Slack channel: set [service] admin_channel (or [slack] "
                "default_channel)")
        content = self.renderer.notice(notice)
        for name in channels:
            self.post_parent(Destination("channel", name), f"{notice.idempotency_key}|channel:{name}",
                             self.directory.channel_id(name), content)

    def _wait_for_first_post(self, notice: AlertNotice, now: int) -> None:
        first = notice.first_message_key()
        if first is None:
            return
        state = store.outbox_row_state(self.engine, first, outbox_kinds(self.name))
        if state is not None and state[0] in ("pending", "failed"):
            raise RetryLater(f"alert {notice.idempotency_key}: waiting for the episode's first message ({first})",
                             max(FIRST_POST_WAIT, state[1] - now + 1))

    def _owner_mention(self, notice: AlertNotice) -> str:
        email = notice.owner_email
        if not email:
            return ""
        uid = self.directory.user_id(email)
        return f"<@{uid}>" if uid else email.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    def _deliver_to(self, d: Destination, notice: AlertNotice, episode: Mapping[str, Any] | None,
                    now: int) -> bool:
        """Deliver to one destination; False when it cannot take the alert (owner not on Slack)."""
        did = notice.idempotency_key
        if d.kind == "dm":
            if self.directory.user_id(d.target) is None:
                return False  # the owner is not on Slack
            if self.config.attention.active and self._held_back(d, notice, episode, now):
                return True
            dg = self.config.digest
            if dg.enabled and notice.severity not in dg.immediate:
                store.queue_digest_item(self.engine, f"{did}|{d.key}", d.target, notice.to_json(), now)
                return True
            channel = self.directory.dm_channel(d.target)
            if channel is None:
                return False
        else:
            channel = self.directory.channel_id(d.target)
        eid = int(episode["id"]) if episode is not None else None
        event = notice.event
        at = notice.at or now
        existing = None
        if eid is not None:
            existing = next((m for m in store.episode_messages(self.engine, eid) if m.destination == d.key), None)
        owner = self._owner_mention(notice)
        step = f"{did}|{d.key}"
        if event == "fired" or existing is None:
            view = self._view(episode, event, at)
            content = self.renderer.alert(notice, view, owner, self.interactive)
            cid, ts = self.post_parent(d, step, channel, content)
            if eid is not None:
                store.save_message(self.engine, eid, d.key, cid, ts, notice.to_json(), event, at)
                current = get_episode(self.engine, eid)
                if current is not None and not current.get("slack_ts"):  # the first destination's message
                    set_slack_message(self.engine, eid, cid, ts)
            self.charts.attach(step, cid, ts, eid, notice.account_name or "")
            return True
        view = self._view(episode, event, at)
        content = self.renderer.followup(notice, view, owner)
        try:
            self.poster.post_once(step, existing.channel, existing.ts, content)
        except PermanentSlackError as exc:
            if exc.error not in ("thread_not_found", "channel_not_found"):
                raise
            log.warning("thread of episode %s in %s is gone (%s); posting a new parent message", eid, d.key,
                        exc.error)
            content = self.renderer.alert(notice, view, owner, self.interactive)
            cid, ts = self.post_parent(d, f"{step}|new-parent", channel, content)
            store.save_message(self.engine, eid, d.key, cid, ts, notice.to_json(), event, at)  # type: ignore[arg-type]
            return True
        store.note_message_event(self.engine, existing.id, event, at)
        fresh = get_episode(self.engine, existing.episode_id)
        if fresh is not None:
            self.refresh_message(fresh, replace(existing, last_event=event, last_event_at=at))
        return True

    def post_parent(self, d: Destination, step: str, channel: str,
                    content: SlackMessageContent) -> tuple[str, str]:
        """Post a parent message for step `step` in `channel`; a cached channel id Slack no longer
        finds is looked up anew once (an owner's DM: see post_to_owner)."""
        if d.kind == "dm":
            return self.post_to_owner(d.target, step, channel, content)
        return self.directory.post_channel(d.target, channel,
                                           lambda ch: self.poster.post_once(step, ch, None, content))

    def post_to_owner(self, email: str, step: str, channel: str,
                      content: SlackMessageContent) -> tuple[str, str]:
        """Post step `step` to the DM `channel` of `email`, exactly once; a stored DM id that went
        stale is reopened and posted to once more (never a channel instead, the owner not marked gone)."""
        def post(ch: str) -> tuple[str, str]:
            return self.poster.post_once(step, ch, None, content)

        return self.directory.post_dm(email, channel, post)

    # ------------------------------------------------------- parent messages

    def _view(self, episode: Mapping[str, Any] | None, event: str, at: int,
              last_event: str | None = None, last_event_at: int | None = None) -> EpisodeView:
        if episode is None:
            return EpisodeView(None, "resolved" if event == "resolved" else "firing", event, at, now=self.clock())
        eid = int(episode["id"])
        feedback = store.episode_feedback(self.engine, eid)
        assigned = store.outbox_row_payload(self.engine, store.assign_key(eid))
        clicked = store.outbox_row_payload(self.engine, task_click_key(eid))
        task = load_tasks(self.engine, [eid]).get(eid) if clicked else None
        return EpisodeView(
            episode_id=eid, status=str(episode["status"]), last_event=last_event or event,
            last_event_at=last_event_at if last_event_at is not None else at,
            acknowledged_by=episode.get("acknowledged_by"), acknowledged_at=episode.get("acknowledged_at"),
            snoozed_until=episode.get("snoozed_until"), resolved_at=episode.get("resolved_at"),
            not_useful_by=tuple(dict.fromkeys(u for u, v, _ in feedback if v == store.NOT_USEFUL)),
            now=self.clock(),
            assigned=(str(assigned.get("csm_email")), str(assigned.get("by"))) if assigned else None,
            task_by=str(clicked.get("clicked_by") or "") or None if clicked and task and task.status == "created"
            else None,
        )

    def refresh_episode(self, episode_id: int) -> int:
        """chat.update every parent message of an episode to show its current state; returns how many."""
        episode = get_episode(self.engine, episode_id)
        if episode is None:
            return 0
        return sum(self.refresh_message(episode, m) for m in store.episode_messages(self.engine, episode_id))

    def refresh_message(self, episode: Mapping[str, Any], m: store.EpisodeMessage) -> bool:
        """chat.update one parent message from its stored alert and the episode's state. A message
        Slack cannot update any more is skipped (False); when its DM channel is gone (channel_not_found)
        the stored DM id is forgotten too, so the owner's next DM opens the channel anew."""
        view = self._view(episode, m.last_event, m.last_event_at)
        notice = AlertNotice.from_json(m.alert)  # stored with the message: its JSON (or an older record)
        content = self.renderer.alert(notice, view, self._owner_mention(notice), self.interactive)
        try:
            self.api.update_message(m.channel, m.ts, content.text, content.blocks)
        except PermanentSlackError as exc:
            if exc.error not in UPDATE_ERRORS:
                raise
            log.warning("cannot update the message of episode %s in %s: %s", m.episode_id, m.destination, exc)
            kind, _, target = m.destination.partition(":")
            if exc.error == "channel_not_found" and kind == "dm":
                store.clear_dm_channel(self.engine, target, channel=m.channel)
            return False
        return True


def actor_label(user_id: str, name: str | None = None) -> str:
    """How a Slack user is recorded as the actor of an action: "U123ABC (alice)"."""
    return f"{user_id} ({name})" if name else user_id

