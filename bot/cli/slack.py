"""`usagebot slack ...`: the Slack integration from the command line.

    usagebot slack manifest [--config FILE] [--format yaml|json]   the app manifest to create the Slack app
    usagebot slack check    [--config FILE]                        config, templates, token and channels
    usagebot slack deliver  [--config FILE] [--db URL] [--at T]    deliver due outbox alerts (+ due digests) once
    usagebot slack feedback [--config FILE] [--db URL] [--since T] per-rule precision ("Not useful" clicks)

Settings come from the config file's [slack] table (default ./config.toml when it exists); the
database from --db, else $USAGEBOT_DB_URL, else [storage].url, else the default SQLite file.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from bot.cli.support import (
    add_command,
    add_config_option,
    add_db_option,
    add_group,
    config_path,
    database_url,
    load_or_report,
    time_or_now,
)
from rules.config import load_document

if TYPE_CHECKING:  # imported where used: every command registers this module (tests/cli/test_startup_imports.py)
    from integrations.slack.config import SlackConfig


@dataclass(frozen=True)
class SlackSettings:
    slack: SlackConfig
    db_url: str | None
    rule_paths: tuple[str, ...] = ()  # [rules] paths (relative to the config file), for the routed channels
    admin_channel: str | None = None  # [service] admin_channel


def load_slack_settings(path: str | None, env: Mapping[str, str] | None = None) -> SlackSettings:
    """[slack] and [storage].url of a config file (defaults without one). Raises ConfigError."""
    from bot.config.app import admin_channel, basics
    from integrations.slack.config import SlackConfig, parse_slack_config

    path = config_path(path, env)
    if path is None:
        return SlackSettings(SlackConfig(), None)
    doc = load_document(path, env)
    cfg = parse_slack_config(doc.section("slack"))
    common = basics(doc)
    admin = admin_channel(doc)
    doc.raise_if_problems()
    return SlackSettings(cfg, common.storage_url, common.rule_paths, admin)


def routed_channels(settings: SlackSettings) -> tuple[list[tuple[str, str]], list[str]]:
    """Every channel alerts can go to, with who sends there: ([(channel, why)], problems loading the rules)."""
    cfg = settings.slack
    found: dict[str, str] = {}
    for c, why in [(cfg.default_channel, "[slack] default_channel"),
                   *((c, f"[slack.channels] {sev}") for sev, c in cfg.severity_channels.items()),
                   (settings.admin_channel, "[service] admin_channel")]:
        if c:
            found.setdefault(c, why)
    problems: list[str] = []
    if settings.rule_paths:
        from rules.loader import check_rules

        ruleset, rule_problems = check_rules(list(settings.rule_paths))
        problems = [f"rules: {p}" for p in rule_problems]
        for r in ruleset.rules if ruleset is not None else []:
            for c in r.routing.channels:
                found.setdefault(c, f"rule {r.id!r}")
    return list(found.items()), problems


def _settings(args: argparse.Namespace, err: TextIO) -> SlackSettings | None:
    return load_or_report(lambda: load_slack_settings(args.config), err)


def _db_url(args: argparse.Namespace, settings: SlackSettings) -> str:
    return database_url(args.db, settings.db_url)


# --------------------------------------------------------------------------- commands


def cmd_manifest(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from integrations.slack.manifest import app_manifest, manifest_yaml

    settings = _settings(args, err)
    if settings is None:
        return 1
    if args.format == "json":
        print(json.dumps(app_manifest(settings.slack), indent=2), file=out)
    else:
        out.write(manifest_yaml(settings.slack))
    return 0


def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from integrations.slack.api import SlackApi
    from integrations.slack.errors import SlackDeliveryError
    from integrations.slack.template_check import template_problems

    settings = _settings(args, err)
    if settings is None:
        return 1
    cfg = settings.slack
    problems = template_problems(cfg)
    for p in problems:
        print(f"template: {p}", file=out)
    if not cfg.enabled:
        print("[slack] bot_token is not set: alerts go to the console (set it to deliver to Slack).", file=out)
        return 1 if problems else 0
    api = SlackApi.from_config(cfg)
    try:
        who = api.auth_test()
        print(f"token OK: bot {who.get('user')} in workspace {who.get('team')}", file=out)
    except SlackDeliveryError as exc:
        print(f"token: {exc}", file=out)
        return 1
    from integrations.slack.lookups import SlackDirectory
    from storage.db import make_engine

    engine = make_engine("sqlite://")  # channel lookups need no stored state
    directory = SlackDirectory(api, engine, cfg)
    channels, rule_problems = routed_channels(settings)
    for p in rule_problems:
        print(p, file=out)
    problems += rule_problems
    for c, why in channels:  # every channel an alert or notice can be routed to must exist
        try:
            print(f"channel {c}: {directory.channel_id(c)}", file=out)
        except SlackDeliveryError as exc:
            problems.append(str(exc))
            print(f"channel {c} ({why}): {exc}", file=out)
    mode = cfg.interactive_mode
    print(f"buttons and {cfg.command}: " + (f"{mode} mode" if mode else
                                           "off (set app_token for Socket Mode or signing_secret for HTTP)"),
          file=out)
    print("OK" if not problems else f"{len(problems)} problem(s).", file=out)
    return 1 if problems else 0


def cmd_deliver(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bot.service.pipeline import deliver_outbox, deliver_rows
    from bot.slack.app import slack_notifier
    from integrations.slack.digest import send_due_digests
    from integrations.slack.notifier import SlackNotifier
    from integrations.slack.updates import SlackUpdates
    from storage.db import make_engine, migrate, require_sqlite_file

    settings = _settings(args, err)
    if settings is None:
        return 1
    now = time_or_now(args.at, "--at", err, "slack")
    if now is None:
        return 2
    engine = make_engine(require_sqlite_file(_db_url(args, settings), "there is no outbox to deliver from"))
    try:
        migrate(engine)
        notifier = slack_notifier(settings.slack, engine)
        report = deliver_outbox(engine, notifier, now)
        if isinstance(notifier, SlackNotifier):  # message updates asked for by buttons, still due
            report.add(deliver_rows(engine, SlackUpdates(notifier), now))
        for e in report.errors:
            print(e, file=err)
        line = f"{report.sent} alert(s) delivered, {report.failed} not delivered ({report.not_sent()})"
        if isinstance(notifier, SlackNotifier) and (settings.slack.digest.enabled or settings.slack.attention.active):
            d = send_due_digests(notifier, now)
            for e in d.errors:
                print(e, file=err)
            line += f"; {d.sent} digest(s) with {d.items} alert(s)"
        print(line, file=out)
        return 0 if report.failed == report.deferred else 1
    finally:
        engine.dispose()


def cmd_feedback(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from storage.db import open_existing
    from storage.slack import rule_precision

    settings = _settings(args, err)
    if settings is None:
        return 1
    since = time_or_now(args.since, "--since", err, "slack") if args.since else None
    if args.since and since is None:
        return 2
    engine = open_existing(_db_url(args, settings))  # read-only: never creates or migrates a database
    try:
        rows = rule_precision(engine, since=since)
    finally:
        engine.dispose()
    if not any(r.not_useful for r in rows):
        print("No 'Not useful' feedback yet." + (f" {sum(r.alerts for r in rows)} alert(s) notified." if rows else ""),
              file=out)
        return 0
    print(precision_table(rows), file=out)
    return 0


def precision_table(rows: list[Any]) -> str:
    """rule, alerts notified, precision (the share not marked "Not useful"), not useful: one line per
    rule (storage.slack.RulePrecision), worst first."""
    width = max(len("rule"), *(len(r.rule_id) for r in rows))
    lines = [f"{'rule':<{width}}  {'alerts':>6}  {'precision':>9}  not useful (alert episodes)"]
    for r in rows:
        p = "-" if r.precision is None else f"{r.precision:.0%}"
        lines.append(f"{r.rule_id:<{width}}  {r.alerts:>6}  {p:>9}  {r.not_useful}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `usagebot slack ...` to the top-level parser."""
    ss = add_group(sub, "slack", "Slack app manifest, checks, outbox delivery, feedback")

    def common(q: argparse.ArgumentParser, db: bool = False) -> None:
        add_config_option(q, " with [slack]")
        if db:
            add_db_option(q)

    m = add_command(ss, "manifest", "print the Slack app manifest (scopes, /usage, interactivity)",
                    ["usagebot slack manifest --config config.toml > manifest.yaml",
                     "usagebot slack manifest --format json"])
    common(m)
    m.add_argument("--format", choices=["yaml", "json"], default="yaml", help="yaml (default) or json")
    m.set_defaults(func=cmd_manifest)

    c = add_command(ss, "check", "check the [slack] config, the templates, the token and every channel alerts "
                                 "are routed to", ["usagebot slack check --config config.toml"])
    common(c)
    c.set_defaults(func=cmd_check)

    d = add_command(ss, "deliver", "deliver due alerts from the outbox (and due digests) once",
                    ["usagebot slack deliver --config config.toml",
                     "usagebot slack deliver --config config.toml --at 2026-11-24T09:00Z"])
    common(d, db=True)
    d.add_argument("--at", metavar="TIME", help="the time to deliver at (ISO-8601; default now)")
    d.set_defaults(func=cmd_deliver)

    f = add_command(ss, "feedback", "per-rule precision: alerts notified and how many were marked 'Not useful' "
                                    "(reads the database, never creates one)",
                    ["usagebot slack feedback --config config.toml", "usagebot slack feedback --since 2026-11-01"])
    common(f, db=True)
    f.add_argument("--since", metavar="TIME", help="only feedback from this time on (ISO-8601)")
    f.set_defaults(func=cmd_feedback)
