"""kill -9 at random points of every side effect: Slack posts, chat.update, Salesforce Task creates and
CRM field PATCHes. Each case runs deliveries / syncs in child processes (forked, so they start in
milliseconds) that are SIGKILLed at random moments: right after Slack or Salesforce carried out the
k-th request (its answer never read), or after a random delay (wherever the worker is: a database
write, a request on the wire). Runs go on until one finishes; then the result must be exactly the
result of a run that was never killed: every message once, in its thread, with its final chat.update
content; every Task once per episode; every Account field at its value (issue 12, "How it is measured").

USAGEBOT_CRASH_CASES (default 1) sets the cases per side effect and database; USAGEBOT_CRASH_REPORT
names a JSON file that gets the counts (cases, kills, duplicates, losses) for docs/operations.md.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from bot.crm import run_crm_sync
from bot.notices import Notices
from bot.pipeline import deliver_outbox, run_cycle
from integrations.salesforce.config import SalesforceConfig
from integrations.slack.notifier import SlackNotifier
from integrations.sources.records import UsageRecord
from rules.config import Secret
from rules.health import DEFAULT_MODEL
from rules.loader import load_rules_text
from rules.model import DAY, AccountFacts, RuleSet
from storage.accounts import upsert_accounts
from storage.crm import load_tasks
from storage.db import make_engine, migrate
from storage.outbox import counts
from storage.usage import upsert_usage
from tests.fakes.salesforce_server import FakeSalesforce
from tests.fakes.slack_server import FakeSlack
from tests.integrations.salesforce.helpers import NOW, fire_episode, seed_accounts, set_usage, tasks_on
from tests.integrations.slack.scenario import SPIKE_DAY, SPIKE_RULE, T0, slack_config

CASES = int(os.environ.get("USAGEBOT_CRASH_CASES", "1"))
LEASE = 1  # seconds: a killed worker's claims lapse fast (the database clock counts whole seconds)
MAX_RUNS = 40
FORK = multiprocessing.get_context("fork")


@dataclass
class Tally:
    cases: int = 0
    kills: int = 0
    kills_after_side_effect: int = 0  # killed after Slack/Salesforce did the work, before the answer was read
    runs: int = 0
    duplicates: int = 0
    losses: int = 0
    resent_idempotent: int = 0  # requests more than a never-killed run sent (re-sent PATCHes, chat.updates)
    kill_points: Counter[str] = field(default_factory=Counter)  # "after chat.update", "timer", ...


TALLY: dict[str, Tally] = {}


def _tally(name: str) -> Tally:
    return TALLY.setdefault(name, Tally())


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    path = os.environ.get("USAGEBOT_CRASH_REPORT")
    if path:
        Path(path).write_text(json.dumps({k: v.__dict__ for k, v in sorted(TALLY.items())}, indent=2))


def _run_killed(target: Callable[[], None], rng: random.Random, arm: Callable[[], str],
                processed: Any, release: Any, tally: Tally, kill: bool) -> bool:
    """Run `target` in a forked child, killed at a random point when `kill`; True when it was killed."""
    mode = rng.choice(["after", "after", "timer"]) if kill else "none"
    hook = arm() if mode == "after" else "timer"
    processed.clear()
    release.clear()
    child = FORK.Process(target=target, daemon=True)
    child.start()
    killed = False
    try:
        if mode == "timer":
            child.join(rng.uniform(0.0, 0.25))
        elif mode == "after":
            deadline = time.monotonic() + 30
            while child.is_alive() and not processed.is_set() and time.monotonic() < deadline:
                time.sleep(0.002)
        if child.is_alive() and mode != "none":
            os.kill(child.pid, signal.SIGKILL)
            killed = True
            tally.kills_after_side_effect += mode == "after" and processed.is_set()
            tally.kill_points[hook.split("#")[0] if processed.is_set() or mode == "timer" else "other"] += 1
        child.join(60)
    finally:
        release.set()
        if child.is_alive():
            child.kill()
            child.join(10)
    assert not child.is_alive()
    if killed:
        assert child.exitcode == -signal.SIGKILL
        tally.kills += 1
    else:
        assert child.exitcode == 0, f"worker failed (exit {child.exitcode}, hook {hook})"
    tally.runs += 1
    return killed


# ---------------------------------------------------------------------------------------------- Slack

SLACK_ACCOUNTS = [
    AccountFacts(f"acct{i}", f"Account {i}", owner_email=["alice@example.com", "bob@example.com",
                                                          "peter@nowhere.example"][i % 3])
    for i in range(6)
]
SPIKING = ("acct0", "acct1", "acct2", "acct3")


def _slack_book(engine: Engine) -> RuleSet:
    upsert_accounts(engine, SLACK_ACCOUNTS, now=T0)
    upsert_usage(engine, [UsageRecord(a.id, "api_calls", T0 + d * DAY + 3600,
                                      {SPIKE_DAY: 600.0, SPIKE_DAY + 1: 650.0}.get(d, 100.0) if a.id in SPIKING
                                      else 100.0 + d % 3)
                          for d in range(SPIKE_DAY + 5) for a in SLACK_ACCOUNTS])
    ruleset = load_rules_text(SPIKE_RULE, "rules.toml")
    for day in (SPIKE_DAY + 1, SPIKE_DAY + 2, SPIKE_DAY + 3):  # fired, re-notified, resolved
        run_cycle(engine, ruleset, T0 + day * DAY, notices=Notices(("slack",), first_run="notify"))
    return ruleset


def _fake_slack() -> FakeSlack:
    fake = FakeSlack().start()
    fake.add_user("U0ALICE01", "alice@example.com", "alice")
    fake.add_user("U0BOBBY01", "bob@example.com", "bob")
    fake.add_channel("usage-alerts", "C0ALERTS1")
    return fake


def _slack_state(fake: FakeSlack) -> Counter[tuple[str, str, str]]:
    """(channel, parent's final text and blocks, "" for the parent or the reply's text) -> how many."""
    out: Counter[tuple[str, str, str]] = Counter()
    with fake.lock:
        for ch in fake.channels.values():
            name = ch.user or ch.name
            parents = {m["ts"]: m for m in ch.messages if m.get("thread_ts") in (None, m["ts"])}
            for m in ch.messages:
                parent = parents.get(m.get("thread_ts") or m["ts"], m)
                head = parent["text"] + json.dumps(parent["blocks"], sort_keys=True)
                out[(name, head, "" if m is parent else m["text"])] += 1
    return out


def _deliver_until_done(engine: Engine, db_url: str, fake: FakeSlack, rng: random.Random | None,
                        tally: Tally) -> None:
    api = fake.api_url
    kills = rng.randint(1, 4) if rng is not None else 0
    for run in range(MAX_RUNS):
        now = T0 + (SPIKE_DAY + 4) * DAY + run * 3600  # later each run: deferred rows come due

        def work(now: int = now) -> None:
            eng = make_engine(db_url)
            cfg = slack_config(fake, base_url=api)
            try:
                deliver_outbox(eng, SlackNotifier(cfg, eng, clock=lambda: now, lease=LEASE), now, lease=LEASE)
            finally:
                eng.dispose()

        if rng is None:
            work()
        else:
            def arm() -> str:
                fake.faults.clear()
                method = rng.choice(["chat.postMessage", "chat.postMessage", "chat.update"])
                k = rng.randint(1, 8)
                if k > 1:
                    fake.fail(method, "delay", 0.0, count=k - 1)
                fake.fail(method, "hang")
                return f"after {method}#{k}"

            killed = _run_killed(work, rng, arm, fake.processed, fake.release, tally, kill=run < kills)
            fake.faults.clear()
            if killed:
                time.sleep(LEASE + 1.05)  # the dead worker's claims lapse
                continue
        left = counts(engine)
        if set(left) <= {"sent"}:
            return
    raise AssertionError(f"outbox not drained after {MAX_RUNS} runs: {counts(engine)}")


@pytest.fixture(scope="module")
def slack_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Counter[tuple[str, str, str]], int]:
    """What Slack holds after the deliveries when nothing is killed, and how many chat.update calls."""
    url = f"sqlite:///{tmp_path_factory.mktemp('ref') / 'ref.db'}"
    engine = make_engine(url)
    migrate(engine)
    fake = _fake_slack()
    try:
        _slack_book(engine)
        _deliver_until_done(engine, url, fake, None, Tally())
        state = _slack_state(fake)
        updates = len(fake.calls_of("chat.update"))
    finally:
        fake.stop()
        engine.dispose()
    # 4 episodes: 4 channel threads + 3 owner DMs (one owner is not on Slack), each a parent + 2 replies
    assert sum(state.values()) == 21 and updates == 14
    return state, updates


@pytest.mark.parametrize("case", range(CASES))
def test_slack_posts_and_updates_survive_kill_9(engine: Engine, db_url: str, slack_reference, case: int) -> None:
    tally = _tally(f"slack/{engine.dialect.name}")
    rng = random.Random(f"slack-{case}-{engine.dialect.name}")
    fake = _fake_slack()
    try:
        _slack_book(engine)
        _deliver_until_done(engine, db_url, fake, rng, tally)
        got = _slack_state(fake)
        updates = len(fake.calls_of("chat.update"))
    finally:
        fake.stop()
    want, want_updates = slack_reference
    tally.cases += 1
    extra, missing = got - want, want - got
    tally.duplicates += sum(extra.values())
    tally.losses += sum(missing.values())
    tally.resent_idempotent += updates - want_updates
    assert not extra and not missing, (extra, missing)


# ------------------------------------------------------------------------------------------ Salesforce

N_ACCOUNTS, N_EPISODES = 24, 14


def _crm_book(engine: Engine, fake: FakeSalesforce) -> None:
    seed_accounts(engine, N_ACCOUNTS, fake=fake)
    set_usage(engine, [f"a{i:04d}" for i in range(0, N_ACCOUNTS, 2)], 10.0, days=20)  # half change health
    for i in range(N_EPISODES):
        fire_episode(engine, f"a{i:04d}", rule_id=f"drop-{i % 3}")
    # two episodes of one account and rule, sharing a subject (80% / 100% quota)
    for d in ("2026-11:0.8", "2026-11:1.0"):
        fire_episode(engine, "a0005", rule_id="calls-quota", kind="quota", message="quota use is high",
                     discriminator=d)


def _crm_config(fake: FakeSalesforce, key_field: str | None) -> SalesforceConfig:
    return SalesforceConfig(auth="session", session_id=Secret(fake.new_session()), instance_url=fake.instance_url,
                            ca_bundle=fake.ca_file, batch_size=4, retries=0, retry_backoff=0.0,
                            tasks=replace(tasks_on(kinds=("quota",)), key_field=key_field))


def _fake_org() -> FakeSalesforce:
    fake = FakeSalesforce(external_ids={"Task": {"Usagebot_Key__c"}}).start()
    fake.now = NOW
    return fake


def _sync_until_done(engine: Engine, db_url: str, fake: FakeSalesforce, cfg: SalesforceConfig,
                     rng: random.Random | None, tally: Tally) -> None:
    kills = rng.randint(1, 4) if rng is not None else 0
    for run in range(MAX_RUNS):
        def work() -> None:
            eng = make_engine(db_url) if rng is not None else engine
            report = run_crm_sync(eng, RuleSet(rules=()), cfg, DEFAULT_MODEL, NOW, dry_run=False)
            assert report.stopped is None, report.stopped

        if rng is None:
            work()
        else:
            def arm() -> str:
                method = rng.choice(["PATCH", "POST"] if not cfg.tasks.key_field else ["PATCH"])
                k = rng.randint(1, 6)
                path = "/composite/sobjects/Task/" if cfg.tasks.key_field and rng.random() < 0.5 else \
                    "/composite/sobjects"
                fake.hang_after(k, path, method)
                what = "Task upsert" if path.endswith("Task/") else "Task create" if method == "POST" else "PATCH"
                return f"after {what}#{k}"

            killed = _run_killed(work, rng, arm, fake.processed, fake.release, tally, kill=run < kills)
            fake.hang = None
            if killed:
                time.sleep(0.05)
                continue
        dry = run_crm_sync(engine, RuleSet(rules=()), cfg, DEFAULT_MODEL, NOW, dry_run=True)
        if not dry.changes and not dry.tasks:
            return
    raise AssertionError(f"CRM sync not done after {MAX_RUNS} runs")


def _crm_state(engine: Engine, fake: FakeSalesforce) -> tuple[dict[str, dict], Counter[str], dict[int, str]]:
    accounts = {rid: {k: v for k, v in r.items() if k not in ("Id", "CreatedDate")}
                for rid, r in fake.records.get("Account", {}).items()}
    keys = Counter(str(t.get("Description", "")).rsplit("usagebot key: ", 1)[-1]
                   for t in fake.records.get("Task", {}).values())
    with engine.connect() as c:
        ids = [int(r[0]) for r in c.exec_driver_sql("SELECT id FROM alert_episodes")]
    tasks = {e: t.sf_task_id for e, t in load_tasks(engine, ids).items() if t.status == "created"}
    return accounts, keys, tasks  # type: ignore[return-value]


@pytest.mark.parametrize("key_field", [None, "Usagebot_Key__c"])
@pytest.mark.parametrize("case", range(CASES))
def test_task_creates_and_field_writes_survive_kill_9(engine: Engine, db_url: str, tmp_path: Path, case: int,
                                                      key_field: str | None) -> None:
    tally = _tally(f"crm{'+key_field' if key_field else ''}/{engine.dialect.name}")
    rng = random.Random(f"crm-{case}-{key_field}-{engine.dialect.name}")
    ref_fake, fake = _fake_org(), _fake_org()
    ref = make_engine(f"sqlite:///{tmp_path / 'ref.db'}")
    try:
        migrate(ref)
        _crm_book(ref, ref_fake)
        _sync_until_done(ref, "", ref_fake, _crm_config(ref_fake, key_field), None, Tally())
        want_accounts, want_keys, want_tasks = _crm_state(ref, ref_fake)
        want_patches = len(ref_fake.written("PATCH"))
        assert len(want_tasks) == N_EPISODES + 2 and set(want_keys.values()) == {1}

        _crm_book(engine, fake)
        _sync_until_done(engine, db_url, fake, _crm_config(fake, key_field), rng, tally)
        accounts, keys, tasks = _crm_state(engine, fake)
        patches = len(fake.written("PATCH"))
    finally:
        ref_fake.stop()
        fake.stop()
        ref.dispose()
    tally.cases += 1
    tally.duplicates += sum(n - 1 for n in keys.values() if n > 1)
    tally.losses += len(set(want_keys) - set(keys)) + sum(1 for a, v in want_accounts.items() if accounts.get(a) != v)
    tally.resent_idempotent += patches - want_patches
    assert accounts == want_accounts  # every field at its value
    assert keys == want_keys  # one Task per episode key, none twice
    assert sorted(tasks) == sorted(want_tasks) and len(set(tasks.values())) == len(tasks)  # each its own Task
    by_key = {str(t["Description"]).rsplit("usagebot key: ", 1)[-1]: t["Id"] for t in fake.records["Task"].values()}
    stored = load_tasks(engine, tasks)
    assert all(by_key[stored[e].task_key] == tasks[e] for e in tasks)
