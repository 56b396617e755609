"""bench/bench_calls.py counts what really went over HTTP to the Slack and Salesforce fakes.

A small demo book (150 accounts x 60 days) runs through the real pipeline: the first cycle, the
next day's, and the next day's again (nothing new). Every figure is checked against the fakes'
own state (messages stored, DM channels opened, Account field values), not merely > 0.
"""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.bench_calls import _ingest, call_bench, measure_cycle_calls
from bench.bench_scale import METRICS4, SHIPPED, bench_rules
from rules.model import DAY
from storage.db import make_engine
from storage.outbox import list_outbox

ACCOUNTS, DAYS, SEED = 150, 60, 3
RULES = bench_rules(SHIPPED, METRICS4)


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A fresh book (no cycle run yet) and its end; tests copy it before running cycles."""
    path = tmp_path_factory.mktemp("calls") / "book.db"
    end = _ingest(f"sqlite:///{path}", ACCOUNTS, DAYS, METRICS4, SEED)
    return path, end


def _copy(book: tuple[Path, int], tmp: Path) -> str:
    src, _ = book
    dst = tmp / "run.db"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
    return f"sqlite:///{dst}"


@pytest.fixture(scope="module")
def run(book: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    url = _copy(book, tmp_path_factory.mktemp("immediate"))
    end = book[1]
    with call_bench(url, RULES, end - DAY) as bench:
        first = bench.cycle(end - DAY, "first")
        dms_after_first = sum(1 for c in bench.slack.channels.values() if c.is_im)
        busiest_after_first = max(len(c.messages) for c in bench.slack.channels.values())
        accounts_after_first = copy.deepcopy(bench.salesforce.records["Account"])
        nxt = bench.cycle(end, "next_day")
        accounts_after_next = copy.deepcopy(bench.salesforce.records["Account"])
        again = bench.cycle(end, "no new data")
        yield {"bench": bench, "url": url, "end": end, "first": first, "next": nxt, "again": again,
               "dms_after_first": dms_after_first, "busiest_after_first": busiest_after_first,
               "sf_first": accounts_after_first,
               "sf_next": accounts_after_next}


def test_slack_counts_are_the_fakes_requests_and_messages(run: dict[str, Any]) -> None:
    bench, cycles = run["bench"], [run["first"], run["next"], run["again"]]
    fake = bench.slack
    assert sum(c["slack_calls_total"] for c in cycles) == len(fake.calls)
    stored = sum(len(ch.messages) for ch in fake.channels.values())
    dm_stored = sum(len(ch.messages) for ch in fake.channels.values() if ch.is_im)
    assert sum(c["slack_messages_stored"] for c in cycles) == stored
    assert sum(c["slack_posts_to_dms"] for c in cycles) == dm_stored
    for c in cycles:
        assert sum(c["slack_calls"].values()) == c["slack_calls_total"]
        assert c["slack_errors"] == 0 and c["errors"] == []
        # every successful chat.postMessage is one message the fake stored
        assert c["slack_calls"].get("chat.postMessage", 0) == c["slack_messages_stored"]
        assert c["delivered"] == c["notified"] and c["delivery_failed"] == 0 and c["outbox_left"] == {}
    first = run["first"]
    assert first["notified"] > 0
    assert first["slack_calls_per_alert"] == pytest.approx(first["slack_calls_total"] / first["notified"])
    # one users.lookupByEmail and one conversations.open per owner DM'd in the first cycle (then cached)
    assert first["slack_calls"]["users.lookupByEmail"] == first["slack_calls"]["conversations.open"]
    assert first["slack_calls"]["conversations.open"] == run["dms_after_first"]
    assert 0 < run["dms_after_first"] <= bench.owners
    # the pacing bound comes from the busiest channel: the one holding the most messages
    assert first["slack_busiest_channel_writes"] == run["busiest_after_first"]
    assert bench.paced_interval == 1.0 and bench.slack_config.min_post_interval == 0.0  # shipped; unpaced run
    assert first["paced_delivery_min_s"] == run["busiest_after_first"] * 1.0


def test_every_notified_alert_posts_once_per_destination(run: dict[str, Any]) -> None:
    """First cycle: all fired, so one parent message per destination: owner DM + routed channels."""
    engine = make_engine(run["url"])
    try:
        rows = _notices(list_outbox(engine, status="sent", limit=100_000))
    finally:
        engine.dispose()
    first_rows = [r for r in rows if r["at"].startswith(_iso_day(run["end"] - DAY))]
    assert len(first_rows) == run["first"]["notified"]
    assert {a["event"] for a in first_rows} == {"fired"}
    expected_posts = 0
    expected_dms = 0
    for a in first_rows:
        owner = bool(a.get("owner_email")) and (a.get("routing") or {}).get("owner", True)
        channels = len((a.get("routing") or {}).get("channels") or []) or 1
        expected_dms += owner
        expected_posts += owner + channels
    assert run["first"]["slack_calls"]["chat.postMessage"] == expected_posts
    assert run["first"]["slack_posts_to_dms"] == expected_dms


def test_crm_writes_are_the_records_whose_fields_changed(run: dict[str, Any]) -> None:
    bench, first, nxt = run["bench"], run["first"], run["next"]
    assert bench.records == ACCOUNTS
    # first sync: every record gets its health fields, 200 per sObject Collections request, one login
    assert first["crm_records_written"] == first["crm_sync_written"] == ACCOUNTS
    assert first["crm_requests"] == math.ceil(ACCOUNTS / 200) and first["crm_logins"] == 1
    assert all(r.get("Usage_Health_Score__c") is not None for r in run["sf_first"].values())
    # next day: exactly the records whose values changed in the org are sent
    changed = sum(1 for rid, r in run["sf_next"].items() if r != run["sf_first"][rid])
    assert nxt["crm_records_written"] == nxt["crm_changed"] == changed
    assert nxt["crm_requests"] == math.ceil(changed / 200) and nxt["crm_logins"] == (1 if changed else 0)
    assert nxt["crm_requests_by_kind"] == ({"PATCH composite/sobjects": nxt["crm_requests"]} if changed else {})


def test_a_cycle_without_new_data_makes_no_calls(run: dict[str, Any]) -> None:
    again = run["again"]
    assert again["notified"] == 0, again
    assert again["slack_calls_total"] == 0 and again["slack_messages_stored"] == 0
    assert again["crm_requests"] == 0 and again["crm_logins"] == 0 and again["crm_records_written"] == 0, {k: v for k, v in again.items() if k.startswith("crm")}


def test_refuses_a_book_that_already_ran_cycles(run: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="already holds alert episodes or outbox rows"):
        measure_cycle_calls(run["url"], RULES, run["end"])


def test_digest_mode_sends_one_dm_per_owner_plus_immediate_severities(book: tuple[Path, int],
                                                                      tmp_path: Path) -> None:
    url = _copy(book, tmp_path)
    result = measure_cycle_calls(url, RULES, book[1], digest=True)
    assert result["digest"] is True
    engine = make_engine(url)
    try:
        rows = _notices(list_outbox(engine, status="sent", limit=100_000))
    finally:
        engine.dispose()
    for c, at in ((result["first"], book[1] - DAY), (result["next_day"], book[1])):
        alerts = [a for a in rows if a["at"].startswith(_iso_day(at))]
        assert len(alerts) == c["notified"]
        to_owner = [a for a in alerts if a.get("owner_email") and (a.get("routing") or {}).get("owner", True)]
        immediate = sum(1 for a in to_owner if a["severity"] == "critical")
        assert c["digest_items"] == len(to_owner) - immediate
        assert c["digests_sent"] == len({a["owner_email"] for a in to_owner if a["severity"] != "critical"})
        assert c["slack_posts_to_dms"] == c["digests_sent"] + immediate
        assert c["slack_calls"].get("chat.postMessage", 0) == c["slack_messages_stored"]


def _notices(rows: list[Any]) -> list[dict[str, Any]]:
    """The alert records of the notification rows (the outbox also holds the CRM sync's rows)."""
    from integrations.notice import AlertNotice

    return [AlertNotice.from_json(r.payload).record() for r in rows if r.kind.startswith("notify:")]


def _iso_day(at: int) -> str:
    from rules.periods import iso

    return iso(at)[:10]
