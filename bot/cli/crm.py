"""`usagebot crm ...`: the Salesforce sync from the command line.

    usagebot crm sync [--dry-run] [--config FILE] [--db URL] [--rules FILE] [--at TIME] [--reconcile]
    usagebot crm status [--config FILE] [--db URL]
    usagebot crm pull [--dry-run] [--full] [--config FILE] [--db URL]

Settings come from the config file's [salesforce] and [health] tables; the
database from --db, else $USAGEBOT_DB_URL, else [storage].url, else the default
SQLite file; rules (used to know each alert's kind) from --rules, else
[rules].paths, else the shipped example rules.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from bot.cli.support import (
    SHIPPED_RULES,
    add_command,
    add_config_option,
    add_db_option,
    add_group,
    config_path,
    database_url,
    load_or_report,
    load_rules_or_report,
    missing_paths,
    time_or_now,
)
from rules.config import load_document

if TYPE_CHECKING:  # imported where used: every command registers this module (tests/cli/test_startup_imports.py)
    from integrations.salesforce.config import SalesforceConfig
    from rules.health import HealthModel


@dataclass(frozen=True)
class CrmSettings:
    salesforce: SalesforceConfig
    health: HealthModel
    db_url: str | None
    rule_paths: list[str]


def load_crm_settings(path: str | None, env: dict[str, str] | None = None) -> CrmSettings:
    """[salesforce], [health], [storage].url and [rules].paths of a config file (defaults without one).

    Raises ConfigError listing every problem (file:line: field: message).
    """
    from bot.config.app import basics
    from bot.config.health import parse_health_model
    from integrations.salesforce.config import SalesforceConfig, parse_salesforce_config
    from rules.health import DEFAULT_MODEL

    path = config_path(path, env)
    if path is None:
        return CrmSettings(SalesforceConfig(), DEFAULT_MODEL, None, [])
    doc = load_document(path, env)
    sf = parse_salesforce_config(doc.section("salesforce"))
    health = parse_health_model(doc.section("health"))
    common = basics(doc)
    doc.raise_if_problems()
    return CrmSettings(sf, health, common.storage_url, list(common.rule_paths))


def _settings_or_report(args: argparse.Namespace, err: TextIO) -> CrmSettings | None:
    return load_or_report(lambda: load_crm_settings(args.config), err)


def _db(args: argparse.Namespace, settings: CrmSettings) -> str:
    return database_url(args.db, settings.db_url)


def cmd_crm_sync(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bot.crm.sync import run_crm_sync
    from bot.progress import activity
    from storage.db import make_engine, migrate, open_existing

    if args.config and missing_paths([args.config], "--config", err):
        return 2
    settings = _settings_or_report(args, err)
    if settings is None:
        return 1
    now = time_or_now(args.at, "--at", err, "crm")
    if now is None:
        return 2
    rule_paths = args.rules or settings.rule_paths or [str(SHIPPED_RULES)]
    if missing_paths(rule_paths, "rules", err):
        return 2
    ruleset = load_rules_or_report(rule_paths, err)
    if ruleset is None:
        return 1
    sf = settings.salesforce
    if not args.dry_run and not sf.can_connect:
        print("usagebot crm sync: no Salesforce credentials in [salesforce] (username + password + "
              "security_token, or username + consumer_key + private_key_file, or session_id + instance_url); "
              "use --dry-run to see what would be written", file=err)
        return 2
    url = _db(args, settings)
    engine = open_existing(url) if args.dry_run else make_engine(url)  # a dry run stores nothing
    try:
        if not args.dry_run:
            migrate(engine)
        with activity("CRM dry run" if args.dry_run else "CRM sync", err):
            report = run_crm_sync(engine, ruleset, sf, settings.health, now, dry_run=args.dry_run, out=out,
                                  reconcile=args.reconcile, verbose=args.verbose)
    finally:
        engine.dispose()
    if report.stopped:
        print(f"usagebot crm sync: stopped: {report.stopped}", file=err)
        return 1
    return 0 if report.ok else 1


def cmd_crm_pull(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Account facts from Salesforce ([salesforce.accounts]); --dry-run shows the changes, stores nothing."""
    from bot.crm.pull import print_pull, run_crm_pull
    from integrations.salesforce.client import SalesforceClient, SalesforceError
    from storage.db import StorageError, make_engine, migrate, open_existing

    if args.config and missing_paths([args.config], "--config", err):
        return 2
    settings = _settings_or_report(args, err)
    if settings is None:
        return 1
    sf = settings.salesforce
    if sf.accounts is None:
        print("usagebot crm pull: no [salesforce.accounts] table in the config: map the Account fields to pull "
              "(e.g. owner = \"Owner.Email\"; docs/salesforce.md)", file=err)
        return 2
    if not sf.can_connect:
        print("usagebot crm pull: no Salesforce credentials in [salesforce] (username + password + "
              "security_token, or username + consumer_key + private_key_file, or session_id + instance_url)",
              file=err)
        return 2
    url = _db(args, settings)
    try:
        engine = open_existing(url) if args.dry_run else make_engine(url)  # a dry run stores nothing
    except StorageError as exc:
        print(f"usagebot crm pull: {exc}", file=err)
        return 1
    try:
        if not args.dry_run:
            migrate(engine)
        try:
            client = SalesforceClient(sf)
        except SalesforceError as exc:
            print(f"usagebot crm pull: {exc}", file=err)
            return 2
        report = run_crm_pull(engine, sf, int(time.time()), args.dry_run, client, full=args.full)
    finally:
        engine.dispose()
    if report.stopped:
        print(f"usagebot crm pull: stopped, nothing stored: {report.stopped}", file=err)
        return 1
    print_pull(report, out)
    return 0


def cmd_crm_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from rules.periods import iso
    from storage.crm import failed_records, last_sync_runs, parked_tasks
    from storage.db import open_existing

    settings = _settings_or_report(args, err)
    if settings is None:
        return 1
    engine = open_existing(_db(args, settings))  # read-only: never creates or migrates a database
    try:
        runs = last_sync_runs(engine, limit=args.runs)
        failing = failed_records(engine, settings.salesforce.object)
        tasks = parked_tasks(engine)
    finally:
        engine.dispose()
    if not runs:
        print("No CRM sync has run yet (dry runs are not recorded).", file=out)
    for r in runs:
        usage = f", org API {r['api_used']:,}/{r['api_max']:,}" if r["api_used"] is not None else ""
        print(f"{iso(r['started_at'])}: {r['changed']} changed, {r['written']} written, {r['failed']} failed, "
              f"{r['deferred']} deferred, {r['tasks_created']} task(s); {r['api_calls']} API call(s){usage}"
              + (f"; stopped: {r['stopped']}" if r["stopped"] else ""), file=out)
    for s in failing:
        state = "parked" if s.parked is not None else "failing"
        print(f"{state}: {s.account_id} ({s.match_key}), {s.failures} attempt(s): {s.last_error}", file=out)
    for t in tasks:
        print(f"parked Task: episode #{t.episode_id}, account {t.account_id}, {t.attempts} attempt(s): "
              f"{t.last_error} (fix it in Salesforce, then `usagebot crm retry {t.account_id}`)", file=out)
    return 0


def cmd_crm_retry(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from storage.crm import unpark_records, unpark_tasks
    from storage.db import open_existing

    settings = _settings_or_report(args, err)
    if settings is None:
        return 1
    engine = open_existing(_db(args, settings))
    try:
        n = unpark_records(engine, settings.salesforce.object, args.accounts or None)
        t = unpark_tasks(engine, args.accounts or None)
    finally:
        engine.dispose()
    print(f"{n} parked record(s) and {t} parked Task(s) will be sent again by the next `usagebot crm sync`.",
          file=out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the top-level parser."""
    crm_sub = add_group(sub, "crm", "Salesforce: write usage health to Account records, create tasks")

    s = add_command(crm_sub, "sync", "compute usage health and write changed fields to Salesforce",
                    ["usagebot crm sync --config config.toml --dry-run",
                     "usagebot crm sync --config config.toml --dry-run --verbose   # every field of every record",
                     "usagebot crm sync --config config.toml"])
    s.add_argument("--dry-run", action="store_true",
                   help="send and store nothing: print what would be written (per record with --verbose)")
    add_config_option(s, " with [salesforce] and [health]")
    add_db_option(s)
    s.add_argument("--rules", action="append", metavar="PATH",
                   help="rule files (default [rules] paths of the config, or the shipped rules)")
    s.add_argument("--at", metavar="TIME", help="compute health as of this time (ISO-8601; default now)")
    s.add_argument("--reconcile", action="store_true",
                   help="read the current field values from Salesforce first and diff against them")
    s.add_argument("--verbose", action="store_true",
                   help="print every record's 'field: old -> new' and every task (default: a summary)")
    s.set_defaults(func=cmd_crm_sync)

    p = add_command(crm_sub, "pull", "read account facts (owner, CSM, plan, quotas, ARR, renewal) from Salesforce "
                                     "Accounts changed since the last pull",
                    ["usagebot crm pull --config config.toml --dry-run", "usagebot crm pull --config config.toml",
                     "usagebot crm pull --config config.toml --full   # every Account, not only the changed"])
    p.add_argument("--dry-run", action="store_true", help="query Salesforce, print what would change, store nothing")
    p.add_argument("--full", action="store_true", help="read every Account, not only those changed since the last pull")
    add_config_option(p, " with [salesforce] and [salesforce.accounts]")
    add_db_option(p)
    p.set_defaults(func=cmd_crm_pull)

    st = add_command(crm_sub, "status", "the last CRM syncs and the records whose writes are failing (reads the "
                                        "database, never creates one)",
                     ["usagebot crm status --config config.toml", "usagebot crm status --db sqlite:///data/u.db"])
    add_config_option(st)
    add_db_option(st)
    st.add_argument("--runs", type=int, default=5, metavar="N", help="how many recent syncs to show (default 5)")
    st.set_defaults(func=cmd_crm_status)

    rt = add_command(crm_sub, "retry", "send parked records and Tasks (Salesforce refused them for good) again "
                                       "at the next sync, after fixing the cause (all, or the accounts given)",
                     ["usagebot crm retry --config config.toml", "usagebot crm retry --config config.toml acme"])
    add_config_option(rt)
    add_db_option(rt)
    rt.add_argument("accounts", nargs="*", metavar="ACCOUNT", help="account ids (default: every parked record and Task)")
    rt.set_defaults(func=cmd_crm_retry)
