"""The "Log task" button: the Salesforce Task of an alert episode, created when someone clicks it.

A click queues ONE outbox row per episode (kind CLICK_KIND, key `crm:task-click:<episode id>`,
INSERT ... ON CONFLICT DO NOTHING), carrying the Task and who clicked, and records the click on
the episode (its history: "task_requested" with the actor). Then the row is carried out at once
under the CRM lock by the CRM outlet (bot.crm.delivery), with the same exactly-once rules as the
sync's Tasks: the intent is recorded before the create, the Task carries the episode's key, a
create in doubt is looked up by key before it is sent again. So a double click, a retried click
(Slack resends an unanswered request) and a sync planning the same episode's Task make one Task.
When Salesforce fails, the row stays queued and the service's deliver job retries it (a sync
never discards it: it is no part of a sync's plan).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from bot.crm.delivery import CLICK_KIND, LOCK, TRIES_SPENT, CrmOutlet
from bot.crm.plan import CrmSyncReport
from bot.crm.sync import ClientFactory, planned_task
from bot.service.pipeline import deliver_rows
from integrations.salesforce.client import SalesforceClient
from integrations.salesforce.config import SalesforceConfig
from integrations.salesforce.errors import RETRY_LIMIT
from integrations.salesforce.mapping import match_key
from storage.accounts import list_accounts
from storage.crm import episode_candidate, load_tasks, unpark_tasks_in
from storage.crm import task_click_key as click_key
from storage.db import write_transaction
from storage.episodes import record_action_in
from storage.locks import LockTimeout, exclusive
from storage.outbox import OutboxItem, enqueue, requeue_finished
from storage.slack import episode_state, outbox_row_payload, outbox_row_state

log = logging.getLogger(__name__)

LOCK_WAIT = 2.0  # seconds a click waits for a running CRM sync before leaving its row to the deliver job


@dataclass(frozen=True)
class TaskClick:
    changed: bool  # a Task was asked for by this click (the episode's history has it)
    message: str  # the answer to the user who clicked (ephemeral)


def _clicked_by(engine: Engine, episode_id: int) -> str | None:
    payload = outbox_row_payload(engine, click_key(episode_id))
    return None if payload is None else str(payload.get("clicked_by") or "") or None


class TaskButton:
    """What a "Log task" click does (see the module docstring)."""

    def __init__(self, engine: Engine, cfg: SalesforceConfig, clock: Callable[[], int],
                 client_factory: ClientFactory | None = None) -> None:
        self.engine, self.cfg, self.clock = engine, cfg, clock
        self.client_factory = client_factory or SalesforceClient

    def _done(self, episode_id: int) -> str | None:
        row = load_tasks(self.engine, [episode_id]).get(episode_id)
        if row is None or row.status != "created":
            return None
        by = _clicked_by(self.engine, episode_id)
        return (f"Salesforce Task {row.sf_task_id or ''} logged".replace("  ", " ")
                + (f" by {by.split(' ', 1)[0]}" if by else " by the CRM sync") + ".")

    def click(self, episode_id: int, actor: str) -> TaskClick:
        done = self._done(episode_id)
        if done is not None:
            return TaskClick(False, f"Already done: {done}")
        state = episode_state(self.engine, episode_id)
        c = episode_candidate(self.engine, episode_id)
        if state is None or c is None:
            return TaskClick(False, "This alert no longer exists.")
        accounts = list_accounts(self.engine, [c.account_id])
        if not accounts:
            return TaskClick(False, f"Account `{c.account_id}` is not in the account facts any more.")
        acct = accounts[0]
        now = self.clock()
        planned = planned_task(self.cfg, c, acct, str(c.explanation.get("kind") or ""), now,
                               load_tasks(self.engine, [episode_id]).get(episode_id),
                               note=f"Logged from Slack by {actor}")
        if planned is None:
            return TaskClick(False, f"No Salesforce record for this account: {match_key(acct, self.cfg)[1]}.")
        item = OutboxItem(click_key(episode_id), CLICK_KIND,
                          {"op": "tasks", "tasks": [planned.to_json()], "clicked_by": actor}, not_before=now)
        parked = planned.previous is not None and planned.previous.status == "parked"
        with write_transaction(self.engine) as conn:  # the row, the unpark and the event: all or none
            new = enqueue(conn, [item], now) == 1
            # a parked Task (refused for good) is asked for again: this click's row sends it once more
            new = new or (parked and requeue_finished(conn, [item.idempotency_key], now, item.payload) == 1)
            if parked:  # what `usagebot crm retry` does, for this one Task: a fresh try count
                unpark_tasks_in(conn, episode_ids=[episode_id], now=now)
            if new:
                record_action_in(conn, state, "task_requested", now, actor=actor,
                                 reason="Log task button in Slack (a Salesforce Task)"
                                 + (": tried again after it was refused" if parked else ""))
        return TaskClick(new, self._deliver(episode_id, now, new))

    def _deliver(self, episode_id: int, now: int, new: bool) -> str:
        client: list[SalesforceClient] = []

        def connect() -> SalesforceClient:
            if not client:
                client.append(self.client_factory(self.cfg))
            return client[0]

        report = CrmSyncReport(as_of=now, dry_run=False, object=self.cfg.object)
        try:
            with exclusive(self.engine, LOCK, wait=LOCK_WAIT):
                deliver_rows(self.engine, CrmOutlet(self.engine, self.cfg, connect, report, now), now,
                             keys=[click_key(episode_id)])
        except LockTimeout:
            return "Queued: the Salesforce Task is created as soon as the CRM sync running now ends."
        done = self._done(episode_id)
        if done is not None:
            return done if new else f"Already done: {done}"
        row = load_tasks(self.engine, [episode_id]).get(episode_id)
        why = (row.last_error if row is not None and row.last_error else report.stopped) or "not sent yet"
        by = _clicked_by(self.engine, episode_id)
        asked = "Queued" if new else f"Already asked for by {(by or '?').split(' ', 1)[0]}"
        if row is not None and row.status == "parked":  # nothing retries it: say why and what to do
            # the marker, not the count: a refusal for good on the last try is a refusal (stored_error
            # keeps an error's end, where the marker is, when it cuts a long one)
            what = (f"The Salesforce Task was not created after {RETRY_LIMIT} tries" if TRIES_SPENT in why
                    else "Salesforce refused the Task")  # tries: refusals a retry may fix, lost answers
            return (f"{what} ({why}). Fix that, then click Log task again "
                    f"(or run `usagebot crm retry {row.account_id}`).")
        state = outbox_row_state(self.engine, click_key(episode_id), [CLICK_KIND])
        if state is not None and state[0] == "dead":  # a request Salesforce refuses: for an operator
            return (f"{asked}: the Salesforce Task is not created ({why}); it is not retried: "
                    "`usagebot outbox list` shows the row, `usagebot outbox retry` sends it again.")
        return f"{asked}: the Salesforce Task is not created yet ({why}); it is retried automatically."
