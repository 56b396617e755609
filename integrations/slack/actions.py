"""What the buttons and `/usage snooze` do to alert episodes (storage + rules.lifecycle semantics).

Acknowledge: rules.lifecycle.acknowledge (no more re-notifications of the episode).
Snooze: rules.lifecycle.snooze (no notifications until then; a new episode of the same key
started while the snooze runs inherits it). "Not useful": feedback stored per rule and episode.
"Assign to CSM": the account's CSM (accounts CSV `csm_email`) gets the alert in a DM, once per
episode (integrations.slack.assign).
Each action is an audit event on the episode with who did it (storage.episodes.record_action).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from integrations.slack.blocks import escape_mrkdwn
from rules.durations import format_duration
from rules.lifecycle import acknowledge, snooze
from storage import slack as store
from storage.accounts import list_accounts
from storage.db import write_transaction
from storage.episodes import record_action
from storage.outbox import enqueue


@dataclass(frozen=True)
class ActionResult:
    changed: bool
    message: str  # shown to the user who clicked (ephemeral)
    episode_id: int | None = None


class EpisodeActions:
    def __init__(self, engine: Engine, clock: Callable[[], int] = lambda: int(time.time())) -> None:
        self.engine = engine
        self.clock = clock

    def acknowledge(self, episode_id: int, actor: str) -> ActionResult:
        s = store.episode_state(self.engine, episode_id)
        if s is None:
            return ActionResult(False, "This alert no longer exists.")
        if s.status == "resolved":
            return ActionResult(False, "This alert is already resolved.", episode_id)
        if s.acknowledged_by:
            by = escape_mrkdwn(s.acknowledged_by.split(" ", 1)[0])
            return ActionResult(False, f"Already acknowledged by {by}.", episode_id)
        now = self.clock()
        record_action(self.engine, acknowledge(s, actor, now), "acknowledged", now, actor=actor,
                      reason="Acknowledge button in Slack")
        return ActionResult(True, "Acknowledged: no more reminders for this alert.", episode_id)

    def snooze(self, episode_id: int, actor: str, seconds: int) -> ActionResult:
        s = store.episode_state(self.engine, episode_id)
        if s is None:
            return ActionResult(False, "This alert no longer exists.")
        now = self.clock()
        until = now + seconds
        record_action(self.engine, snooze(s, until), "snoozed", now, actor=actor,
                      reason=f"snoozed for {format_duration(seconds)} in Slack")
        return ActionResult(True, f"Snoozed for {format_duration(seconds)}.", episode_id)

    def not_useful(self, episode_id: int, user_id: str, actor: str) -> ActionResult:
        s = store.episode_state(self.engine, episode_id)
        if s is None:
            return ActionResult(False, "This alert no longer exists.")
        now = self.clock()
        if not store.add_feedback(self.engine, s.rule_id, episode_id, user_id, store.NOT_USEFUL, now):
            return ActionResult(False, "You already marked this alert as not useful.", episode_id)
        record_action(self.engine, s, "feedback_not_useful", now, actor=actor,
                      reason=f"marked not useful in Slack (rule {s.rule_id})")
        return ActionResult(True, f"Thanks: feedback recorded for rule `{escape_mrkdwn(s.rule_id)}`.", episode_id)

    def assign_csm(self, episode_id: int, actor: str) -> ActionResult:
        """Queue the alert's DM to the account's CSM (one row per episode: a second click adds nothing)
        and record who assigned it to whom; the caller delivers the row (integrations.slack.assign)."""
        from integrations.slack.assign import assign_item, assign_key

        s = store.episode_state(self.engine, episode_id)
        if s is None:
            return ActionResult(False, "This alert no longer exists.")
        accounts = list_accounts(self.engine, [s.account_id])
        csm = accounts[0].csm_email.strip().lower() if accounts else ""
        if not csm:
            return ActionResult(False, f"Account `{escape_mrkdwn(s.account_id)}` has no CSM in the account facts "
                                       "(the accounts CSV column `csm_email`).", episode_id)
        now = self.clock()
        with write_transaction(self.engine) as conn:
            new = enqueue(conn, [assign_item(episode_id, csm, actor, now)], now) == 1
        if not new:
            row = store.outbox_row_payload(self.engine, assign_key(episode_id))
            by = escape_mrkdwn(str((row or {}).get("by") or "someone").split(" ", 1)[0])
            return ActionResult(False, f"Already assigned to {escape_mrkdwn(csm)} by {by}.", episode_id)
        record_action(self.engine, s, "assigned_csm", now, actor=actor, reason=f"assigned to the CSM {csm} in Slack")
        return ActionResult(True, f"Assigned to the CSM {escape_mrkdwn(csm)}: the alert is in their DMs.", episode_id)

    def opened_link(self, episode_id: int, actor: str, which: str) -> None:
        """Audit that someone followed the CRM / dashboard link of an alert."""
        s = store.episode_state(self.engine, episode_id)
        if s is not None:
            now = self.clock()
            record_action(self.engine, s, f"opened_{which}", now, actor=actor, reason=f"{which} link in Slack")

    def snooze_account(self, account_id: str, actor: str, seconds: int) -> tuple[int, int]:
        """Snooze an account: its open episodes (and the latest of every key, so a new episode inherits
        it) plus new Slack alerts for it until then. Returns (episodes snoozed, until)."""
        now = self.clock()
        until = now + seconds
        store.snooze_account(self.engine, account_id, until, actor, now)
        n = 0
        for s in store.account_episodes(self.engine, [account_id], open_only=False):
            if s.snoozed_until is not None and s.snoozed_until >= until:
                continue
            record_action(self.engine, snooze(s, until), "snoozed", now, actor=actor,
                          reason=f"account snoozed for {format_duration(seconds)} with /usage snooze")
            n += 1
        return n, until
