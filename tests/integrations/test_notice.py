"""The alert notice: typed across the outbox, its JSON round trip, rows queued by older versions, the
episode id known from the transaction that records the step."""

from __future__ import annotations

import io
from dataclasses import FrozenInstanceError

import pytest
from sqlalchemy.engine import Engine

from bot.service.notices import Notices
from bot.service.pipeline import deliver_outbox, run_cycle
from integrations.console import ConsoleNotifier
from integrations.notice import WIRE_VERSION, AlertNotice, GroupedAlert, Routing
from rules.model import DAY
from storage.episodes import load_states
from storage.outbox import OutboxItem, enqueue, list_outbox, notify_kind
from tests.integrations.slack.scenario import FIRED, SPIKE_DAY, T0, Scenario, TestClock

# An alert record exactly as bot/service/alerts.py queued it before notices were typed (ISO times, no version,
# no episode id): rows like this may sit in an outbox during an upgrade.
OLD_ROW = {
    "event": "fired", "at": "2026-10-02T00:00:00Z", "rule": "calls-spike", "kind": "spike", "account": "acme",
    "account_name": "Acme Corp", "owner_email": "alice@example.com", "plan": "growth", "crm_id": "001ACME",
    "metric": "api_calls", "severity": "warning", "value": 650.0, "baseline": 100.0, "threshold": 300.0,
    "window": ["2026-09-17T00:00:00Z", "2026-10-02T00:00:00Z"], "message": "api_calls is 6.5x the usual level",
    "discriminator": "", "notified": True, "suppressed_reason": "", "started_at": "2026-10-02T00:00:00Z",
    "fired_at": "2026-10-02T00:00:00Z", "rule_hash": "abc123", "description": "API calls far above",
    "routing": {"owner": True, "channels": ["#usage-alerts"]}, "template": None, "details": {"ratio": 6.5},
    "recent": [100.0, None, 650.0], "quiet": False,
    "grouped": [{"rule": "calls-quota", "kind": "quota", "metric": "api_calls", "discriminator": "2026-10:0.8",
                 "severity": "info", "message": "80% of the quota", "value": 8000.0, "baseline": None,
                 "threshold": 8000.0}],
}
OLD_ADMIN_ROW = {
    "event": "stale", "at": "2026-10-02T00:00:00Z", "rule": "source:drops", "kind": "source", "account": "drops",
    "account_name": "source drops", "owner_email": "", "plan": "", "crm_id": "", "metric": "api_calls",
    "severity": "warning", "value": None, "baseline": None, "threshold": None, "window": None,
    "message": "Usage source 'drops' is stale", "discriminator": "", "notified": True, "suppressed_reason": "",
    "started_at": "2026-10-01T00:00:00Z", "fired_at": "2026-10-02T00:00:00Z", "rule_hash": "",
    "description": "usage source health", "routing": {"owner": False, "channels": ["#usagebot-admin"]},
    "template": "source", "details": {"source": "drops"}, "recent": [],
}


def test_a_notice_is_frozen_and_typed() -> None:
    n = AlertNotice.from_json(OLD_ROW)
    with pytest.raises(FrozenInstanceError):
        n.event = "resolved"  # type: ignore[misc]
    assert n.at == T0 + FIRED * DAY and isinstance(n.at, int) and n.started_at == n.fired_at == n.at
    assert n.window == (T0 + 16 * DAY, n.at) and n.routing == Routing(True, ("#usage-alerts",))
    assert n.grouped == (GroupedAlert("calls-quota", "quota", "api_calls", "2026-10:0.8", "info", "80% of the quota",
                                      8000.0, None, 8000.0),)
    assert n.recent == (100.0, None, 650.0) and n.episode_id is None and not n.is_admin


def test_json_round_trip_keeps_every_field_and_times_stay_ints() -> None:
    n = AlertNotice.from_json(OLD_ROW)
    wire = n.to_json()
    assert wire["v"] == WIRE_VERSION and wire["at"] == n.at and wire["started_at"] == n.started_at
    assert wire["window"] == [T0 + 16 * DAY, n.at]
    assert AlertNotice.from_json(wire) == n
    withid = AlertNotice.from_json({**wire, "episode_id": 42})
    assert withid.episode_id == 42 and AlertNotice.from_json(withid.to_json()) == withid


def test_the_record_of_an_old_row_is_the_old_row() -> None:
    """What templates, the backtest and the webhook see: the alert record, unchanged by the round trip."""
    assert AlertNotice.from_json(OLD_ROW).record() == OLD_ROW
    admin = AlertNotice.from_json(OLD_ADMIN_ROW)
    assert admin.is_admin and admin.routing.owner is False
    assert {k: v for k, v in admin.record().items() if k in OLD_ADMIN_ROW} == OLD_ADMIN_ROW


def test_the_idempotency_key_is_the_outbox_key_built_once() -> None:
    n = AlertNotice.from_json(OLD_ROW)
    assert n.idempotency_key == f"notify:calls-spike:acme:api_calls::fired:{n.at}"  # as queued before
    assert n.first_message_key() == n.idempotency_key
    later = AlertNotice.from_json({**OLD_ROW, "event": "resolved", "at": "2026-10-04T00:00:00Z"})
    assert later.first_message_key() == n.idempotency_key
    admin = AlertNotice.from_json({**OLD_ADMIN_ROW, "key": "source-stale:drops:1"})
    assert admin.idempotency_key == "source-stale:drops:1" and admin.first_message_key() is None
    item = Notices(("slack", "ops")).items(admin)
    assert [(i.kind, i.idempotency_key) for i in item] == [("notify:slack", "source-stale:drops:1"),
                                                            ("notify:ops", "source-stale:drops:1")]


def test_outbox_rows_name_their_episode_and_carry_int_times(engine: Engine) -> None:
    """The notice is built inside the transaction that records the step: its episode id is the stored one."""
    sc = Scenario(engine, TestClock())
    sc.cycle(SPIKE_DAY)
    report = sc.cycle(FIRED)
    (fired,) = [a for a in report.alerts if a.event == "fired"]
    episode = load_states(engine)[fired.episode_key]
    assert fired.episode_id == episode.episode_id is not None
    (row,) = [r for r in list_outbox(engine) if r.payload.get("event") == "fired"]
    assert row.idempotency_key == fired.idempotency_key
    assert row.payload["episode_id"] == episode.episode_id and row.payload["at"] == T0 + FIRED * DAY
    assert AlertNotice.from_json(row.payload) == fired


def test_a_row_queued_in_the_old_shape_still_delivers(engine: Engine) -> None:
    out = io.StringIO()
    enqueue(engine, [OutboxItem(AlertNotice.from_json(OLD_ROW).idempotency_key, notify_kind("console"), OLD_ROW),
                     OutboxItem("source-stale:drops:1", notify_kind("console"), OLD_ADMIN_ROW)], now=T0)
    report = deliver_outbox(engine, ConsoleNotifier(out=out), T0 + 60 * DAY)
    assert report.sent == 2 and report.failed == 0
    text = out.getvalue()
    assert "FIRED · Acme Corp · api_calls · rule calls-spike" in text and "2026-10-02T00:00:00Z" in text
    assert "Also: 80% of the quota (rule calls-quota)" in text and "Usage source 'drops' is stale" in text


def test_run_cycle_reports_notices_with_the_backtest_fields(engine: Engine) -> None:
    sc = Scenario(engine, TestClock())
    run_cycle(engine, sc.ruleset, T0 + SPIKE_DAY * DAY, notices=Notices(first_run="notify"))
    report = run_cycle(engine, sc.ruleset, T0 + FIRED * DAY, notices=Notices(first_run="notify"))
    (fired,) = [a for a in report.alerts if a.event == "fired"]
    assert list(fired.record()) == list(OLD_ROW)  # the documented fields (docs/backtest.md), in order
