"""`usagebot demo`: the whole pipeline on the embedded default.

Generates a synthetic book (integrations.sources.demo), stores it in a fresh
SQLite database, then runs the real evaluation cycle once per day over the
last `replay_days` days exactly as the scheduler would, delivering alerts
through the outbox to the console notifier. Ends with the CRM field values a
sync would write (dry run). It also writes the book as CSV files so the
`check` and `backtest` commands can be tried on the same data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bot.cli.support import SHIPPED_RULES, command_prefix
from bot.crm.preview import crm_preview
from bot.service.notices import Notices
from bot.service.pipeline import deliver_outbox, run_cycle
from integrations.console import ConsoleNotifier
from integrations.sources.csv_rows import write_accounts_csv, write_usage_csv
from integrations.sources.demo import DemoBook, generate_book
from rules.impact import Pricing
from rules.model import DAY, RuleSet
from rules.periods import iso
from storage.accounts import upsert_accounts
from storage.db import make_engine, migrate
from storage.episodes import load_states
from storage.usage import UPSERT_CHUNK, in_chunks, load_usage


@dataclass
class DemoReport:
    db_path: Path
    usage_csv: Path
    accounts_csv: Path
    fired: int
    notified: int
    resolved: int
    open_alerts: int
    by_rule: Counter
    crm_rows: int


def write_book_csv(book: DemoBook, usage_path: Path, accounts_path: Path, labels_path: Path | None = None) -> None:
    """The book as the CSV files `usagebot backtest` and `ingest` read (exact round trip), and its
    ground truth as the labels `backtest --labels` reads."""
    write_usage_csv(usage_path, book.records())
    write_accounts_csv(accounts_path, book.accounts)
    if labels_path is not None:
        from bot.backtest.labels import OutcomeLabel, write_labels

        write_labels(labels_path, [OutcomeLabel(lb.account, lb.metric, lb.start, lb.end, lb.kind)
                                   for lb in book.labels if lb.account != "*"])


def example_pricing() -> Pricing:
    """[pricing] of the shipped example config (the demo book's plans are starter, growth, enterprise)."""
    from bot.cli.init import example_config
    from bot.config.pricing import parse_pricing
    from rules.config.sections import document_from_text

    doc = document_from_text(example_config(), "config.example.toml")
    pricing = parse_pricing(doc.section("pricing"))
    doc.raise_if_problems()
    return pricing


def run_demo(
    ruleset: RuleSet,
    out: TextIO,
    data_dir: str | Path = "usagebot-data",
    n_accounts: int = 60,
    days: int = 120,
    replay_days: int = 30,
    seed: int = 7,
    end: int | None = None,
    crm_limit: int = 25,
) -> DemoReport:
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    db_path = data / "demo.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)

    book = generate_book(n_accounts=n_accounts, days=days, end=end, seed=seed)
    usage_csv, accounts_csv = data / "demo-usage.csv", data / "demo-accounts.csv"
    write_book_csv(book, usage_csv, accounts_csv, data / "demo-labels.csv")

    engine = make_engine(f"sqlite:///{db_path}")
    try:
        migrate(engine)
        upsert_accounts(engine, book.accounts)
        rows = load_usage(engine, in_chunks(book.records(), UPSERT_CHUNK))
        print(f"usagebot demo: {len(book.accounts)} synthetic accounts, {len(book.metrics)} metrics "
              f"({', '.join(book.metrics)}), {days} days of daily usage, {rows:,} rows -> {db_path}", file=out)
        print(f"Rules: {', '.join(ruleset.files) or 'given'} ({len(ruleset.rules)} rules). No Slack or "
              f"Salesforce credentials: alerts go to the console, the CRM sync is a dry run.", file=out)
        print(f"Replaying the last {replay_days} days as the scheduler would (one evaluation per day close):",
              file=out)
        notifier = ConsoleNotifier(out=out)
        notices = Notices(pricing=example_pricing())  # the example config's price list: why each alert matters
        fired = notified = resolved = 0
        by_rule: Counter = Counter()
        reasons: Counter = Counter()
        first = book.end - replay_days * DAY
        for t in range(first + DAY, book.end + 1, DAY):
            report = run_cycle(engine, ruleset, t, notices=notices)
            shown = [a for a in report.alerts if a.notified]
            if shown:
                print(f"\n── {iso(t)[:10]} {'─' * 50}\n", file=out)
            deliver_outbox(engine, notifier, t)
            for a in report.alerts:
                if a.event == "fired":
                    fired += 1
                    notified += a.notified
                    by_rule[a.rule] += 1
                    if not a.notified:
                        reasons[a.suppressed_reason] += 1
                elif a.event == "resolved":
                    resolved += 1

        rows_crm = crm_preview(engine, ruleset, book.end)
        open_alerts = sum(1 for s in load_states(engine).values() if s.status == "firing")
        why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        print(f"\nSummary: {fired} alerts fired ({notified} notified" + (f"; not notified: {why}" if why else "")
              + f"), {resolved} resolved, {open_alerts} open now.", file=out)
        for rule_id, n in sorted(by_rule.items()):
            print(f"  {rule_id}: {n}", file=out)
        print(f"\nCRM dry run: Salesforce Account fields that `crm sync` would write "
              f"(worst {min(crm_limit, len(rows_crm))} of {len(rows_crm)} accounts by health):", file=out)
        header = ["ACCOUNT", "CRM ID", "Usage_Health_Score__c", "Usage_Trend__c", "Quota_Utilization__c",
                  "Expansion_Signal__c", "Last_Usage_Alert_At__c"]
        table = []
        for r in sorted(rows_crm, key=lambda r: (r.health.score, r.account.id))[:crm_limit]:
            f = r.fields
            q = f["Quota_Utilization__c"]
            table.append([r.account.name[:28], r.account.crm_id or "-", f"{f['Usage_Health_Score__c']} "
                          f"({f['Usage_Health_Band__c']})", str(f["Usage_Trend__c"]),
                          "-" if q is None else f"{q:g}%", "yes" if f["Expansion_Signal__c"] else "no",
                          f["Last_Usage_Alert_At__c"] or "-"])
        widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=out)
        for row in table:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), file=out)
        ub = command_prefix()  # `usagebot` is not on a fresh shell's PATH when it lives in .venv/bin
        rules = ruleset.files[0] if ruleset.files else SHIPPED_RULES
        print(f"\nTry next (in any shell, from {Path.cwd()}):\n  {ub} check {rules}\n"
              f"  {ub} backtest --rules {rules} --usage {usage_csv} --accounts {accounts_csv}"
              f" --report {data / 'backtest.html'} --labels {data / 'demo-labels.csv'}\n"
              f"  {ub} ui   # alerts, episodes and accounts with charts, in the browser\n"
              f"  {ub} init my-usagebot --demo && {ub} serve --config my-usagebot/config.toml   "
              "# the service on this book", file=out)
        return DemoReport(db_path, usage_csv, accounts_csv, fired, notified, resolved, open_alerts, by_rule,
                          len(rows_crm))
    finally:
        engine.dispose()
