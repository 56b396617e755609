"""Slack and Salesforce API calls per evaluation cycle, counted over real HTTP.

    .venv/bin/python -m bench.bench_calls --accounts 2000                 # shipped config (immediate DMs)
    .venv/bin/python -m bench.bench_calls --accounts 2000 --digest both   # also with [slack.digest] on

On a database holding a usage book (accounts + usage_points, as bench_scale's ingest
phase leaves it), `measure_cycle_calls` starts two local fakes in this process:
FakeSlack (a user for every owner email of the book, the channels the config and the
rules route to) and FakeSalesforce (one Account record per book account, Id = the
account's crm_id, as `match = "id"` expects). It then runs the real pipeline twice,
as the service does: at `end - day` (the first cycle: a backlog of every current
condition) and at `end` (the next day, steady state). Each cycle is

  run_cycle (episodes + outbox) -> deliver_outbox through the real SlackNotifier
  (slack_sdk over HTTP to FakeSlack; min_post_interval = 0 so pacing never sleeps),
  repeated until the outbox is drained -> with [slack.digest] on, the digest job at
  that day's digest time -> run_crm_sync (not a dry run) against FakeSalesforce
  through simple-salesforce.

Every figure is counted from the fakes' request logs (what went over HTTP): Slack
calls by method, messages stored, Salesforce requests (logins apart) and records
sent. The configuration is the shipped example (config.example.toml) with only the
credentials and endpoints pointed at the fakes. The run leaves its episodes, outbox,
Slack and CRM state in the database: give it a book on which no cycle ran yet.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from rules.model import DAY, AccountFacts, Rule, RuleSet

if TYPE_CHECKING:
    from integrations.salesforce.config import SalesforceConfig
    from integrations.slack.config import SlackConfig
    from integrations.slack.notifier import SlackNotifier
    from rules.health import HealthModel
    from tests.fakes.salesforce_server import FakeSalesforce
    from tests.fakes.slack_server import FakeSlack

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "config.example.toml"
DELIVER_LIMIT = 500  # rows per deliver_outbox call, as the service's deliver job
MAX_DELIVERY_ROUNDS = 10_000


class _Clock:
    """The simulated time the notifier and the Slack directory see (epoch seconds)."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclass
class _Marks:
    """Positions in the fakes' logs at the start of a step."""

    slack_calls: int
    slack_messages: int
    sf_log: int


@dataclass
class CallBench:
    """The fakes, the configs and the notifier of one measurement; `cycle(at)` runs one cycle."""

    engine: Engine
    ruleset: RuleSet
    slack: FakeSlack
    salesforce: FakeSalesforce
    slack_config: SlackConfig
    sf_config: SalesforceConfig
    health: HealthModel
    clock: _Clock
    paced_interval: float = 0.0  # the config's min_post_interval (the benchmark itself runs unpaced)
    notifier: SlackNotifier | Any = None  # bot.slack.app.slack_notifier's answer
    accounts: int = 0
    owners: int = 0
    records: int = 0
    cycles: list[dict[str, Any]] = field(default_factory=list)
    first_run: str = "notify"  # [evaluation] first_run: "notify" measures the per-alert path of every condition

    # ------------------------------------------------------------------ marks

    def _messages(self) -> int:
        with self.slack.lock:
            return sum(len(c.messages) for c in self.slack.channels.values())

    def _mark(self) -> _Marks:
        with self.slack.lock:
            n_calls = len(self.slack.calls)
        return _Marks(n_calls, self._messages(), len(self.salesforce.log))

    def _slack_since(self, m: _Marks) -> dict[str, Any]:
        with self.slack.lock:
            calls = self.slack.calls[m.slack_calls:]
            dms = {c.id for c in self.slack.channels.values() if c.is_im}
        posts = [c for c in calls if c.method == "chat.postMessage"]
        writes = Counter(str(c.params.get("channel")) for c in calls
                         if c.method in ("chat.postMessage", "chat.update"))
        busiest = max(writes.values(), default=0)
        return {
            "slack_calls": dict(sorted(Counter(c.method for c in calls).items())),
            "slack_calls_total": len(calls),
            "slack_errors": sum(1 for c in calls if c.status != 200 or c.error),
            "slack_posts_to_dms": sum(1 for c in posts if str(c.params.get("channel")) in dms),
            "slack_messages_stored": self._messages() - m.slack_messages,
            "slack_busiest_channel_writes": busiest,
            # SlackApi spaces posts/updates to one channel by min_post_interval, so with the
            # configured pacing delivery takes at least this long (the busiest channel's writes)
            "paced_delivery_min_s": busiest * self.paced_interval,
        }

    def _salesforce_since(self, m: _Marks) -> dict[str, Any]:
        log = list(self.salesforce.log[m.sf_log:])
        data = [r for r in log if not r.is_login]
        sent = sum(len(r.body.get("records", [])) for r in data
                   if r.method == "PATCH" and "/composite/sobjects" in r.path and r.status < 300
                   and isinstance(r.body, dict))
        bulk_rows = sum(max(0, len(r.body.splitlines()) - 1) for r in data
                        if r.method == "PUT" and "/jobs/ingest/" in r.path and isinstance(r.body, str))
        return {
            "crm_requests": len(data),
            "crm_logins": len(log) - len(data),
            "crm_requests_by_kind": dict(sorted(Counter(_sf_kind(r.method, r.path) for r in data).items())),
            "crm_records_written": sent + bulk_rows,
            "crm_errors": sum(1 for r in log if r.status >= 300),
        }

    # ------------------------------------------------------------------ cycle

    def cycle(self, at: int, label: str = "") -> dict[str, Any]:
        """One service cycle at `at`: evaluate, deliver until drained, digests, CRM sync; the counts."""
        from bot.crm.sync import run_crm_sync
        from bot.service.notices import Notices
        from bot.service.pipeline import deliver_outbox, run_cycle
        from integrations.salesforce.client import SalesforceClient
        from storage.outbox import counts

        self.clock.now = at
        t0 = time.perf_counter()
        notices = Notices((self.notifier.name,), self.slack_config.default_channel, self.first_run)
        report = run_cycle(self.engine, self.ruleset, at, notices=notices)
        evaluate_s = time.perf_counter() - t0

        start = self._mark()
        t0 = time.perf_counter()
        sent = failed = rounds = 0
        errors: list[str] = []
        while rounds < MAX_DELIVERY_ROUNDS:
            d = deliver_outbox(self.engine, self.notifier, at, limit=DELIVER_LIMIT)
            rounds += 1
            sent, failed = sent + d.sent, failed + d.failed
            errors += d.errors
            if d.sent == 0:  # nothing claimed, or only rows that failed (due again later)
                break
        digests = digest_items = 0
        if self.slack_config.digest.enabled:
            from integrations.slack.digest import digest_time, send_due_digests

            dg = self.slack_config.digest
            due_at, _ = digest_time(at, dg.hour, dg.minute, dg.timezone)
            self.clock.now = max(at, due_at)
            dr = send_due_digests(self.notifier, self.clock.now)
            digests, digest_items = dr.sent, dr.items
            errors += dr.errors
            self.clock.now = at
        delivery_s = time.perf_counter() - t0
        slack = self._slack_since(start)

        crm_start = self._mark()
        fake = self.salesforce

        def client_factory(cfg: SalesforceConfig) -> SalesforceClient:
            return SalesforceClient(cfg, session=fake.session(), sleep=lambda s: None)

        t0 = time.perf_counter()
        crm = run_crm_sync(self.engine, self.ruleset, self.sf_config, self.health, at, dry_run=False,
                           client_factory=client_factory)
        crm_s = time.perf_counter() - t0
        sf = self._salesforce_since(crm_start)

        left = {s: n for s, n in counts(self.engine).items() if s != "sent"}
        notified = report.outbox_items
        out: dict[str, Any] = {
            "label": label, "at": at, "alerts": len(report.alerts), "notified": notified,
            "delivered": sent, "delivery_failed": failed, "delivery_rounds": rounds, "outbox_left": left,
            "digests_sent": digests, "digest_items": digest_items,
            **slack,
            "slack_calls_per_alert": slack["slack_calls_total"] / notified if notified else None,
            "slack_posts_per_alert": (slack["slack_calls"].get("chat.postMessage", 0) / notified
                                      if notified else None),
            **sf,
            "crm_changed": len(crm.changes), "crm_sync_written": crm.written, "crm_sync_failed": len(crm.failed),
            "crm_stopped": crm.stopped,
            "evaluate_s": evaluate_s, "delivery_s": delivery_s, "crm_sync_s": crm_s,
            "errors": errors[:20],
        }
        self.cycles.append(out)
        return out


def _sf_kind(method: str, path: str) -> str:
    if "/composite/sobjects" in path:
        return f"{method} composite/sobjects"
    if "/jobs/ingest" in path:
        return f"{method} jobs/ingest"
    if "/query" in path:
        return "GET query"
    return f"{method} other"


# ---------------------------------------------------------------------------- setup


def _env(slack: FakeSlack, salesforce: FakeSalesforce) -> dict[str, str]:
    """Environment for the shipped config: credentials of the fakes; the config's other secrets
    (ingest, disabled sources) get placeholders, as the benchmark never uses them."""
    return {
        "SLACK_BOT_TOKEN": slack.token, "SLACK_APP_TOKEN": slack.app_token, "SLACK_SIGNING_SECRET": "",
        "SF_USERNAME": salesforce.username, "SF_PASSWORD": salesforce.password,
        "SF_SECURITY_TOKEN": salesforce.security_token,
        "USAGEBOT_INGEST_SECRET": "unused-by-bench-calls", "BILLING_API_TOKEN": "unused-by-bench-calls",
        "OPENMETER_TOKEN": "unused-by-bench-calls",
    }


def _routed_channels(slack_config: SlackConfig, rules: Sequence[Rule]) -> list[str]:
    names = [slack_config.default_channel, *slack_config.severity_channels.values()]
    for r in rules:
        names += list(r.routing.channels)
    return [c for c in dict.fromkeys(names) if c]


def _seed_slack(fake: FakeSlack, accounts: Sequence[AccountFacts], slack_config: SlackConfig, rules: Sequence[Rule]) -> int:
    from integrations.slack.lookups import is_channel_id

    emails = sorted({a.owner_email.strip().lower() for a in accounts if a.owner_email.strip()})
    for i, email in enumerate(emails):
        fake.add_user(f"U{i + 1:08d}", email)
    for c in _routed_channels(slack_config, rules):
        fake.add_channel(c.lstrip("#"), cid=c if is_channel_id(c) else None)
    return len(emails)


def _seed_salesforce(fake: FakeSalesforce, accounts: Sequence[AccountFacts], sf_config: SalesforceConfig) -> int:
    n = 0
    for a in accounts:
        if sf_config.match == "external_id":
            fake.add_record(sf_config.object, {"Name": a.name, sf_config.external_id_field: a.id})
        elif a.crm_id:
            fake.add_record(sf_config.object, {"Name": a.name}, id=a.crm_id)
        else:
            continue
        n += 1
    return n


def _check_fresh(engine: Engine, where: str) -> list[AccountFacts]:
    from storage.accounts import list_accounts
    from storage.episodes import load_states
    from storage.outbox import counts

    accounts = list_accounts(engine)
    if not accounts:
        raise ValueError(f"bench_calls: no accounts in {where}; ingest a usage book first "
                         "(bench_scale's ingest phase, or `python -m bench.bench_calls` for a fresh one)")
    if load_states(engine) or sum(counts(engine).values()):
        raise ValueError(f"bench_calls: {where} already holds alert episodes or outbox rows; the first cycle "
                         "would not be a first cycle. Run on a book no evaluation cycle has touched "
                         "(a fresh ingest, or a copy taken before any cycle)")
    return accounts


@contextmanager
def call_bench(db_url: str, rules: Sequence[Rule], start: int, *, config_path: str | Path = EXAMPLE_CONFIG,
               digest: bool | None = None, first_run: str = "notify") -> Iterator[CallBench]:
    """The fakes seeded from the book in `db_url`, the shipped config pointed at them, one notifier.

    digest: None = as the config says; True/False = [slack.digest] enabled or not.
    first_run: the [evaluation] first_run policy of the cycles ("notify": every condition is sent).
    """
    from bot.config.app import load_config
    from bot.slack.app import slack_notifier
    from rules.health import DEFAULT_MODEL
    from storage.db import make_engine, migrate, redact_url
    from tests.fakes.salesforce_server import FakeSalesforce
    from tests.fakes.slack_server import FakeSlack

    engine = make_engine(db_url)
    try:
        migrate(engine)
        accounts = _check_fresh(engine, redact_url(db_url))
        with FakeSlack.running() as slack, FakeSalesforce() as salesforce:
            cfg = load_config(config_path, env=_env(slack, salesforce))
            if cfg.slack is None or not cfg.slack.enabled:
                raise ValueError(f"bench_calls: {config_path} has no [slack] bot_token = \"${{SLACK_BOT_TOKEN}}\"")
            if cfg.salesforce is None or not cfg.salesforce.can_connect:
                raise ValueError(f"bench_calls: {config_path} has no [salesforce] credentials from "
                                 "SF_USERNAME / SF_PASSWORD / SF_SECURITY_TOKEN")
            slack_cfg = replace(cfg.slack, base_url=slack.api_url, min_post_interval=0.0)
            if digest is not None:
                slack_cfg = replace(slack_cfg, digest=replace(slack_cfg.digest, enabled=digest))
            clock = _Clock(start)
            bench = CallBench(engine=engine, ruleset=RuleSet(tuple(rules)), slack=slack, salesforce=salesforce,
                              slack_config=slack_cfg, sf_config=cfg.salesforce,
                              health=cfg.health or DEFAULT_MODEL, clock=clock,
                              paced_interval=cfg.slack.min_post_interval, first_run=first_run)
            bench.notifier = slack_notifier(slack_cfg, engine, clock)
            bench.accounts = len(accounts)
            bench.owners = _seed_slack(slack, accounts, slack_cfg, rules)
            bench.records = _seed_salesforce(salesforce, accounts, cfg.salesforce)
            yield bench
    finally:
        engine.dispose()


def measure_cycle_calls(db_url: str, rules: Sequence[Rule], end: int, *, day: int = DAY,
                        config_path: str | Path = EXAMPLE_CONFIG, digest: bool | None = None,
                        first_run: str = "notify") -> dict[str, Any]:
    """Slack and Salesforce calls of the first cycle (at end - day) and of the next day's (at end).

    See the module docstring. Returns {"accounts", "owners", "crm_records", "digest", "config",
    "first": {...}, "next_day": {...}}; each cycle dict holds alerts, notified, delivered, slack_calls
    (by method), slack_calls_total, slack_messages_stored, slack_calls_per_alert, crm_requests,
    crm_logins, crm_records_written, delivery_s, crm_sync_s and more (see CallBench.cycle).
    """
    with call_bench(db_url, rules, end - day, config_path=config_path, digest=digest,
                    first_run=first_run) as bench:
        first = bench.cycle(end - day, "first")
        nxt = bench.cycle(end, "next_day")
        return {"accounts": bench.accounts, "owners": bench.owners, "crm_records": bench.records,
                "digest": bench.slack_config.digest.enabled, "config": str(config_path), "first_run": first_run,
                "first": first, "next_day": nxt}


# ---------------------------------------------------------------------------- CLI


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.2f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def render(results: Sequence[dict[str, Any]]) -> str:
    """A table: one column per (mode, cycle)."""
    cols: list[tuple[str, dict[str, Any]]] = []
    for r in results:
        mode = "digest" if r["digest"] else "immediate"
        cols += [(f"{mode}: first", r["first"]), (f"{mode}: next day", r["next_day"])]
    methods = sorted({m for _, c in cols for m in c["slack_calls"]})
    rows: list[tuple[str, list[str]]] = [
        ("alerts notified (outbox rows)", [_fmt(c["notified"]) for _, c in cols]),
        ("delivered / failed", [f"{c['delivered']:,} / {c['delivery_failed']:,}" for _, c in cols]),
        ("digests sent (items)", [f"{c['digests_sent']:,} ({c['digest_items']:,})" for _, c in cols]),
        ("Slack calls, total", [_fmt(c["slack_calls_total"]) for _, c in cols]),
        *[(f"  {m}", [_fmt(c["slack_calls"].get(m, 0)) for _, c in cols]) for m in methods],
        ("  of the posts: to owner DMs", [_fmt(c["slack_posts_to_dms"]) for _, c in cols]),
        ("Slack messages stored", [_fmt(c["slack_messages_stored"]) for _, c in cols]),
        ("Slack calls per notified alert", [_fmt(c["slack_calls_per_alert"]) for _, c in cols]),
        ("Slack errors", [_fmt(c["slack_errors"]) for _, c in cols]),
        ("delivery wall s (unpaced)", [f"{c['delivery_s']:.1f}" for _, c in cols]),
        ("  busiest channel: posts + updates", [_fmt(c["slack_busiest_channel_writes"]) for _, c in cols]),
        ("  with configured pacing, at least s", [f"{c['paced_delivery_min_s']:,.0f}" for _, c in cols]),
        ("Salesforce requests (+ logins)", [f"{c['crm_requests']:,} (+{c['crm_logins']})" for _, c in cols]),
        ("Salesforce records written", [_fmt(c["crm_records_written"]) for _, c in cols]),
        ("CRM sync wall s", [f"{c['crm_sync_s']:.1f}" for _, c in cols]),
        ("evaluation (run_cycle) wall s", [f"{c['evaluate_s']:.1f}" for _, c in cols]),
    ]
    width = max(18, *(len(h) for h, _ in cols))
    head = f"{'per cycle':<36}" + "".join(f"{h:>{width + 2}}" for h, _ in cols)
    lines = [head] + [f"{label:<36}" + "".join(f"{v:>{width + 2}}" for v in vals) for label, vals in rows]
    r0 = results[0]
    lines.insert(0, f"usagebot Slack/CRM calls per cycle: {r0['accounts']:,} accounts, {r0['owners']} owners on "
                    f"Slack, {r0['crm_records']:,} Salesforce records; config {Path(r0['config']).name}")
    lines.insert(1, "")
    return "\n".join(lines)


def _ingest(db_url: str, accounts: int, days: int, metrics: Sequence[str], seed: int) -> int:
    from integrations.sources.demo import generate_book
    from storage.accounts import upsert_accounts
    from storage.db import make_engine, migrate
    from storage.usage import in_chunks, load_usage

    book = generate_book(n_accounts=accounts, days=days, seed=seed, metrics=metrics)
    engine = make_engine(db_url)
    try:
        migrate(engine)
        upsert_accounts(engine, book.accounts, now=book.end)
        load_usage(engine, in_chunks(book.records(), 200_000))
    finally:
        engine.dispose()
    return book.end


def main(argv: list[str] | None = None) -> int:
    from bench.bench_scale import METRICS4, SHIPPED, bench_rules

    p = argparse.ArgumentParser(description="Slack and Salesforce API calls per evaluation cycle (local fakes)")
    p.add_argument("--accounts", type=int, default=2000)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--metrics", type=int, default=4, choices=range(1, 5))
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--rules", default=str(SHIPPED))
    p.add_argument("--config", default=str(EXAMPLE_CONFIG), help="config file ([slack], [salesforce], [health])")
    p.add_argument("--digest", choices=("config", "on", "both"), default="config",
                   help="[slack.digest]: as the config says (shipped: off), on, or both modes on copies of the book")
    p.add_argument("--first-run", choices=("digest", "quiet", "notify"), default="notify",
                   help="[evaluation] first_run of the cycles: notify (every condition of the first cycle is "
                        "posted: the per-alert cost) or the shipped digest (one admin summary)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    metrics = METRICS4[: args.metrics]
    rules = bench_rules(args.rules, metrics)
    modes: list[bool | None] = {"config": [None], "on": [True], "both": [False, True]}[args.digest]
    results = []
    with tempfile.TemporaryDirectory(prefix="usagebot-calls-") as tmp:
        book = Path(tmp) / "book.db"
        t0 = time.perf_counter()
        end = _ingest(f"sqlite:///{book}", args.accounts, args.days, metrics, args.seed)
        if not args.json:
            print(f"  book: {args.accounts:,} accounts x {len(metrics)} metrics x {args.days} days "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        for i, mode in enumerate(modes):
            db = book
            if i < len(modes) - 1:  # every mode but the last runs on a copy of the untouched book
                db = Path(tmp) / f"book-{i}.db"
                for suffix in ("", "-wal", "-shm"):
                    if Path(f"{book}{suffix}").exists():
                        shutil.copyfile(f"{book}{suffix}", f"{db}{suffix}")
            t0 = time.perf_counter()
            r = measure_cycle_calls(f"sqlite:///{db}", rules, end, config_path=args.config, digest=mode,
                                    first_run=args.first_run)
            r["wall_s"] = time.perf_counter() - t0
            results.append(r)
            if i < len(modes) - 1:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
    print(json.dumps(results, indent=2) if args.json else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
