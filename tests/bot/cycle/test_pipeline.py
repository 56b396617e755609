"""The storage-backed cycle (what the scheduler runs) against the backtest replay."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from bot.backtest.run import run_backtest
from bot.cli.demo import write_book_csv
from bot.service.notices import Notices
from bot.service.pipeline import deliver_outbox, run_cycle
from integrations.sources.demo import generate_book
from rules.loader import load_rules
from rules.model import DAY
from rules.periods import iso
from storage.accounts import upsert_accounts
from storage.episodes import load_states
from storage.usage import upsert_usage

SHIPPED = Path(__file__).resolve().parents[3] / "rules" / "examples" / "default.toml"
END = 1_792_800_000 - 1_792_800_000 % DAY  # a fixed midnight (2026-10-24)


class Recorder:
    name = "console"

    def __init__(self, fail_first: int = 0) -> None:
        self.delivered: list[dict] = []
        self.fail_first = fail_first
        self.calls = 0

    def deliver(self, alert):
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionError("slack is down")
        self.delivered.append(alert.record())


@pytest.fixture(scope="module")
def book():
    return generate_book(n_accounts=25, days=80, end=END, seed=11)


@pytest.fixture(scope="module")
def holiday_book():
    """Two book-wide holidays in the compared month: cohort events, pending runs they break."""
    return generate_book(n_accounts=25, days=80, end=END, seed=11, holidays=2)


def _key(a: dict) -> tuple:
    return (a["event"], a["at"], a["rule"], a["account"], a["metric"], a["discriminator"], a["notified"])


@pytest.mark.parametrize("chunk_accounts", [None, 7, "7-joined"])
@pytest.mark.parametrize("which", ["book", "holiday_book"])
def test_scheduler_cycles_equal_backtest_replay(engine, which, tmp_path, chunk_accounts, monkeypatch, request):
    book = request.getfixturevalue(which)
    if chunk_accounts == "7-joined":  # chunks read through the temporary-table join, as big books' chunks do
        import storage.usage

        monkeypatch.setattr(storage.usage, "_IN_LIMIT", 3)
        chunk_accounts = 7
    ruleset = load_rules([SHIPPED])
    upsert_accounts(engine, book.accounts)
    upsert_usage(engine, book.records())
    start = END - 30 * DAY
    scheduled = []
    cohorts = []
    notifier = Recorder()
    for t in range(start + DAY, END + 1, DAY):
        report = run_cycle(engine, ruleset, t, chunk_accounts=chunk_accounts)
        scheduled.extend(a.record() for a in report.alerts)
        cohorts.extend((e.rule_id, e.at) for e in report.cohort_events)
        deliver_outbox(engine, notifier, t)

    usage_csv, accounts_csv = tmp_path / "u.csv", tmp_path / "a.csv"
    write_book_csv(book, usage_csv, accounts_csv)
    replayed = [e.record() for e in run_backtest(ruleset, usage_csv, accounts_csv, start=start, end=END).events]

    assert scheduled, "the demo book should produce alerts with the shipped rules"
    assert sorted(map(_key, scheduled)) == sorted(map(_key, replayed))
    for a, b in zip(sorted(scheduled, key=_key), sorted(replayed, key=_key), strict=True):
        assert a["value"] == pytest.approx(b["value"]) and a["message"] == b["message"]
    # every notified transition was delivered exactly once (besides: quiet closes, which only update
    # what a notifier showed, and the admin channel's first-run summary and cohort-event notices)
    alerts = [a for a in notifier.delivered if not a.get("quiet") and a["kind"] not in ("first_run", "cohort")]
    assert sorted(map(_key, alerts)) == sorted(_key(a) for a in scheduled if a["notified"])
    held = [a for a in notifier.delivered if a["kind"] == "cohort"]
    assert sorted((a["rule"].removeprefix("cohort:"), a["at"]) for a in held) == sorted(
        (r, iso(at)) for r, at in cohorts)
    assert bool(cohorts) == (which == "holiday_book")
    summaries = [a["message"] for a in notifier.delivered if a["kind"] == "first_run"]
    assert summaries[0].startswith("First evaluation of 10 rule(s) and 25 account(s)")
    assert all("already holding at the first evaluation have now lasted" in m for m in summaries[1:])


def test_rerunning_a_cycle_duplicates_nothing(engine, book):
    ruleset = load_rules([SHIPPED])
    upsert_accounts(engine, book.accounts)
    upsert_usage(engine, book.records())
    t = END
    first = run_cycle(engine, ruleset, t - DAY)
    again = run_cycle(engine, ruleset, t - DAY)  # e.g. a restart re-running the same tick
    assert not [x for x in again.transitions if x.event == "fired"]
    with engine.connect() as c:
        n_outbox = c.execute(text("select count(*) from outbox")).scalar_one()
    assert n_outbox == first.outbox_items


def test_failed_delivery_is_retried_and_never_duplicated(engine, book):
    ruleset = load_rules([SHIPPED])
    upsert_accounts(engine, book.accounts)
    upsert_usage(engine, book.records())
    t = END
    for day_t in range(END - 20 * DAY, t + 1, DAY):
        run_cycle(engine, ruleset, day_t)
    notifier = Recorder(fail_first=2)
    r1 = deliver_outbox(engine, notifier, t)
    assert r1.failed == 2 and "slack is down" in r1.errors[0]
    r_early = deliver_outbox(engine, notifier, t + 1)  # backoff: failed rows are not due yet
    assert r_early.failed == 0
    r2 = deliver_outbox(engine, notifier, t + 3600)
    assert r2.failed == 0 and r2.sent == 2
    r3 = deliver_outbox(engine, notifier, t + 7200)
    assert r3.sent == 0
    keys = [_key(a) for a in notifier.delivered]
    assert len(keys) == len(set(keys)) == r1.sent + 2
    states = load_states(engine)
    assert any(s.status == "firing" for s in states.values())


def test_incremental_cycles_over_account_subsets_equal_the_full_replay(engine, book, tmp_path):
    """Evaluating the changed accounts only (in two halves) gives exactly the full run's events."""
    ruleset = load_rules([SHIPPED])
    upsert_accounts(engine, book.accounts)
    upsert_usage(engine, book.records())
    ids = sorted(a.id for a in book.accounts)
    halves = [ids[::2], ids[1::2]]
    start = END - 15 * DAY
    got = []
    for t in range(start + DAY, END + 1, DAY):
        for half in halves:
            report = run_cycle(engine, ruleset, t, account_ids=half)
            assert {a.account for a in report.alerts} <= set(half)
            got.extend(a.record() for a in report.alerts)
    usage_csv, accounts_csv = tmp_path / "u.csv", tmp_path / "a.csv"
    write_book_csv(book, usage_csv, accounts_csv)
    want = [e.record() for e in run_backtest(ruleset, usage_csv, accounts_csv, start=start, end=END).events]
    assert got and sorted(map(_key, got)) == sorted(map(_key, want))


def test_incremental_cycle_of_nobody_changes_nothing(engine, book):
    ruleset = load_rules([SHIPPED])
    upsert_accounts(engine, book.accounts)
    upsert_usage(engine, book.records())
    report = run_cycle(engine, ruleset, END, account_ids=[])
    assert report.transitions == [] and report.outbox_items == 0


def test_account_snoozed_from_slack_is_recorded_but_not_notified(engine, book):
    from storage.slack import snooze_account

    ruleset = load_rules([SHIPPED])
    upsert_accounts(engine, book.accounts)
    upsert_usage(engine, book.records())
    t = END - 10 * DAY
    # find accounts that fire at t, then replay the same tick on a fresh state with one of them snoozed
    notify = Notices(first_run="notify")  # not a first-run test: every condition is sent
    probe = run_cycle(engine, ruleset, t, notices=notify)
    fired = [a.record() for a in probe.alerts if a.event == "fired" and a.notified]
    assert fired
    victim = fired[0]["account"]
    with engine.begin() as c:
        for table in ("outbox", "alert_events", "alert_episodes"):
            c.execute(text(f"delete from {table}"))
    snooze_account(engine, victim, until=t + DAY, by="U1", at=t - 60)
    report = run_cycle(engine, ruleset, t, notices=notify)
    mine = [a.record() for a in report.alerts if a.account == victim and a.event == "fired"]
    assert mine and all(not a["notified"] and a["suppressed_reason"] == "account snoozed" for a in mine)
    others = [a.record() for a in report.alerts if a.account != victim and a.event == "fired"]
    assert sum(a["notified"] for a in others) == sum(a["notified"] for a in fired if a["account"] != victim)


def _anomaly_rules(bucket: str, metrics: list[str]):
    from bench.quality import anomaly_ruleset

    return anomaly_ruleset(metrics, bucket)


def _scheduled_vs_replayed(engine, ruleset, start, end, step, usage_csv, accounts_csv, chunk_accounts=None):
    scheduled = []
    for t in range(start + step, end + 1, step):
        scheduled.extend(a.record() for a in run_cycle(engine, ruleset, t, chunk_accounts=chunk_accounts).alerts)
    replayed = [e.record() for e in run_backtest(ruleset, usage_csv, accounts_csv, start=start, end=end).events]
    return scheduled, replayed


@pytest.mark.parametrize("chunk_accounts", [None, 7])
def test_anomaly_scheduler_cycles_equal_backtest_replay_daily(engine, book, tmp_path, chunk_accounts):
    """The anomaly preset (daily buckets, every metric of the demo book): the storage-backed cycles
    send exactly what the backtest replays, messages and learnt numbers included (no look-ahead)."""
    ruleset = _anomaly_rules("1d", ["api_calls", "events"])
    upsert_accounts(engine, book.accounts)
    upsert_usage(engine, book.records())
    usage_csv, accounts_csv = tmp_path / "u.csv", tmp_path / "a.csv"
    write_book_csv(book, usage_csv, accounts_csv)
    scheduled, replayed = _scheduled_vs_replayed(engine, ruleset, END - 30 * DAY, END, DAY, usage_csv, accounts_csv,
                                                 chunk_accounts)
    assert any(a["kind"] == "anomaly" and a["event"] == "fired" for a in scheduled)
    assert sorted(map(_key, scheduled)) == sorted(map(_key, replayed))
    for a, b in zip(sorted(scheduled, key=_key), sorted(replayed, key=_key), strict=True):
        assert a["message"] == b["message"] and a["details"] == pytest.approx(b["details"])


def test_anomaly_scheduler_cycles_equal_backtest_replay_hourly(engine, tmp_path):
    """Hourly series (a daily cycle, counts with zeros, injected bursts and dips)."""
    from datetime import UTC, datetime

    import numpy as np

    from integrations.sources.csv_rows import read_usage_csv

    hour = 3600
    end = END
    n = 24 * 26
    rng = np.random.default_rng(4)
    t = end - (n - np.arange(n)) * hour
    day = ((t % DAY) >= 8 * hour) & ((t % DAY) < 20 * hour)
    rows = ["timestamp,account,metric,value"]
    for a, level in (("busy", 200.0), ("small", 2.0), ("flat", 50.0)):
        lam = np.where(day, level, level / 4) if a != "flat" else np.full(n, level)
        vals = rng.poisson(lam).astype(float)
        vals[rng.random(n) < 0.01] *= 5
        vals[-30:-27] = 0
        for ts_, v in zip(t, vals, strict=True):
            stamp = datetime.fromtimestamp(int(ts_), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            rows.append(f"{stamp},{a},calls,{int(v)}")
    usage_csv = tmp_path / "h.csv"
    usage_csv.write_text("\n".join(rows) + "\n")
    upsert_usage(engine, read_usage_csv(usage_csv).records)
    ruleset = _anomaly_rules("1h", ["calls"])
    scheduled, replayed = _scheduled_vs_replayed(engine, ruleset, end - 2 * DAY, end, hour, usage_csv, None)
    assert any(a["event"] == "fired" for a in scheduled)
    assert sorted(map(_key, scheduled)) == sorted(map(_key, replayed))
    for a, b in zip(sorted(scheduled, key=_key), sorted(replayed, key=_key), strict=True):
        assert a["message"] == b["message"] and a["details"] == pytest.approx(b["details"])


def test_a_row_failing_its_last_try_is_counted_dead(engine):
    """The try that uses up a row's attempts makes it dead: the run's report says so (callers answer
    "retried automatically" only when nothing is dead, e.g. the Assign to CSM button)."""
    from storage.outbox import OutboxItem, enqueue, list_outbox, notify_kind

    enqueue(engine, [OutboxItem("n:1", notify_kind("console"), {"alert": {}})], now=END)
    notifier = Recorder(fail_first=100)
    reports = [deliver_outbox(engine, notifier, END + i * 4000) for i in range(10)]
    assert [r.failed for r in reports] == [1] * 10
    assert [r.dead for r in reports] == [0] * 9 + [1]
    assert list_outbox(engine)[0].status == "dead"
