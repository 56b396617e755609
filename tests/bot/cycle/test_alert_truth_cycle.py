"""What the scheduler and the manual commands do with the database (issue 11, storage side).

- a backfill loaded after the service started is evaluated and gives the episodes of a fresh load;
- `usagebot evaluate` never delivers another notifier's outbox rows (it says what it queued);
- a dead account keeps its open alerts in /usage;
- the first evaluation of a book pages nobody; its admin summary is one message.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from bot.service.evaluation import Evaluator
from bot.service.notices import Notices
from integrations.sources.demo import generate_book
from rules.loader import load_rules
from rules.model import DAY
from storage.accounts import upsert_accounts
from storage.episodes import load_states
from storage.outbox import OutboxItem, enqueue, list_outbox, notify_kind
from storage.usage import in_chunks, load_usage
from tests.bot.helpers import run_cli

SHIPPED = Path(__file__).resolve().parents[3] / "rules" / "examples" / "default.toml"


def _episodes(engine: Engine) -> set[tuple]:
    return {(s.key, s.status, s.started_at, s.fired_at) for s in load_states(engine).values()}


def test_a_backfill_after_the_service_started_gives_the_episodes_of_a_fresh_load(
        engine: Engine, tmp_path: Path) -> None:
    """Seen: `serve --once` on an empty database, then 120 days of history loaded, then `serve --once`:
    0 alerts; the same data into a fresh database: 58."""
    from storage.db import make_engine, migrate

    book = generate_book(n_accounts=40, days=120, seed=5)
    ruleset = load_rules([SHIPPED])
    now = book.end + 120  # just after the last bucket closed
    fresh = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        migrate(fresh)
        upsert_accounts(fresh, book.accounts, now=now)
        load_usage(fresh, in_chunks(book.records(), 50_000))
        Evaluator(fresh, ruleset, max_wait=0).tick(now)
        want = _episodes(fresh)
    finally:
        fresh.dispose()
    assert len([e for e in want if e[1] == "firing"]) >= 5
    ev = Evaluator(engine, ruleset, max_wait=0)
    ev.tick(now)  # the service's first poll: nothing yet
    assert _episodes(engine) == set()
    upsert_accounts(engine, book.accounts, now=now)
    load_usage(engine, in_chunks(book.records(), 50_000))  # the backfill (what `usagebot ingest` does)
    report = ev.tick(now + 60)
    assert report.evaluations and {e.reason for e in report.evaluations} == {"late data"}
    assert _episodes(engine) == want


def test_evaluate_never_delivers_another_notifiers_rows(tmp_path: Path) -> None:
    """Seen: `usagebot evaluate` delivered every due outbox row to the console, so a pending Slack
    alert was marked sent and never reached Slack."""
    from storage.db import make_engine, migrate

    url = f"sqlite:///{tmp_path / 'u.db'}"
    engine = make_engine(url)
    migrate(engine)
    enqueue(engine, [OutboxItem("notify:waiting-for-slack", notify_kind("slack"), {"event": "fired"})], now=1)
    engine.dispose()
    rules = tmp_path / "r.toml"
    rules.write_text(SHIPPED.read_text())
    code, out, err = run_cli("evaluate", "--db", url, "--rules", str(rules), "--at", "2026-11-02")
    assert code == 0, err
    engine = make_engine(url)
    try:
        (row,) = [r for r in list_outbox(engine) if r.idempotency_key == "notify:waiting-for-slack"]
        assert row.status == "pending" and row.attempts == 0  # still Slack's to deliver
    finally:
        engine.dispose()


def test_a_dead_account_keeps_its_open_alerts_in_usage(engine: Engine) -> None:
    """Seen: on 12-01 /usage showed 0 open alerts for an account that had been dead for 5 weeks."""
    from integrations.slack.usage_summary import summarize_account
    from storage.accounts import list_accounts

    book = generate_book(n_accounts=30, days=150, seed=8)
    row = next(i for i, a in enumerate(book.accounts) if a.plan == "enterprise")
    for metric in book.metrics:
        book.values[metric][row, -40:] = 0.0  # dead for the last 40 days
    dead = book.account_ids[row]
    upsert_accounts(engine, book.accounts, now=book.end)
    load_usage(engine, in_chunks(book.records(), 50_000))
    ruleset = load_rules([SHIPPED])
    ev = Evaluator(engine, ruleset, max_wait=0, catch_up=1, notices=Notices(first_run="notify"))
    for day in range(book.end - 45 * DAY, book.end + 1, DAY):
        ev.tick(day + 60)
    open_rules = sorted(s.rule_id for s in load_states(engine).values() if s.account_id == dead and s.is_open)
    assert {"api-calls-drop", "api-calls-inactive", "events-drop"} <= set(open_rules)
    account = next(a for a in list_accounts(engine) if a.id == dead)
    summary = summarize_account(engine, account, book.end)
    assert len(summary.open_alerts) >= 3


def test_first_evaluation_of_a_book_pages_nobody_and_summarises_once(engine: Engine) -> None:
    """Seen: 58 alerts on a fresh 60-account book; 38k Slack posts for 100k accounts."""
    book = generate_book(n_accounts=60, days=120, seed=7)
    upsert_accounts(engine, book.accounts, now=book.end)
    load_usage(engine, in_chunks(book.records(), 50_000))
    ev = Evaluator(engine, load_rules([SHIPPED]), max_wait=0,
                   notices=Notices(("console",), "#usagebot-admin", "digest"))
    report = ev.tick(book.end + 60)
    fired = [t for e in report.evaluations for t in e.report.transitions if t.event == "fired"]
    assert len(fired) >= 10 and not [t for t in fired if t.notify]
    rows = list_outbox(engine)
    assert [r.payload["kind"] for r in rows] == ["first_run"]
    assert rows[0].payload["routing"] == {"owner": False, "channels": ["#usagebot-admin"]}
    assert f"{len(fired)} condition(s) already true" in rows[0].payload["message"]
    # the next evaluation is as usual: nothing held any more, no second summary
    nxt = ev.tick(book.end + DAY + 60)
    assert nxt.evaluations
    assert all(t.reason != "first evaluation" for e in nxt.evaluations for t in e.report.transitions)
    assert [r.payload["kind"] for r in list_outbox(engine)].count("first_run") == 1
