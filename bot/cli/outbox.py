"""`usagebot outbox list|retry|deliver`: the side effects waiting to happen, for operators.

    usagebot outbox list [--status dead] [--kind notify:ops]   newest rows first, with their last error
    usagebot outbox retry [ID ...]                             dead rows (all, or these) queued again
    usagebot outbox deliver --config FILE [--at T]             every configured notifier's due rows, once

Every notifier has its own rows (`notify:<name>`); Slack message updates are `slack:update`, CRM
writes `crm:fields` / `crm:tasks` (docs/operations.md, "Delivery guarantees").
"""

from __future__ import annotations

import argparse
import time
from typing import Any, TextIO

from bot.cli.support import add_command, add_config_option, add_db_option, add_group, db_url
from rules.config.redaction import clip


def cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from rules.periods import iso
    from storage.db import open_existing
    from storage.outbox import counts, list_outbox

    engine = open_existing(db_url(args))
    try:
        rows = [r for r in list_outbox(engine, status=args.status, limit=args.limit * 10 if args.kind else args.limit)
                if args.kind is None or r.kind == args.kind][: args.limit]
        total = counts(engine)
    finally:
        engine.dispose()
    print("outbox: " + (", ".join(f"{n} {s}" for s, n in sorted(total.items())) or "empty"), file=out)
    for r in rows:
        due = "" if r.status == "sent" else f", due {iso(r.next_attempt_at)}"
        print(f"#{r.id} {r.status} {r.kind} {r.idempotency_key} ({r.attempts} attempt(s){due})", file=out)
        if r.last_error and r.status != "sent":
            print(f"    {clip(r.last_error, 300)}", file=out)  # masked, then cut
    return 0


def cmd_retry(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from storage.db import open_existing
    from storage.outbox import retry_dead

    engine = open_existing(db_url(args))
    try:
        n = retry_dead(engine, int(time.time()), ids=args.ids or None)
    finally:
        engine.dispose()
    print(f"{n} dead row(s) queued again (the service's deliver job, or `usagebot outbox deliver`, sends them)",
          file=out)
    return 0


def cmd_deliver(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bot.cli.settings import config_path
    from bot.cli.support import load_or_report, time_or_now
    from bot.service.pipeline import DeliveryReport, deliver_rows
    from integrations.notifier import NoticeOutlet
    from integrations.notifiers import build_notifiers
    from integrations.slack.notifier import SlackNotifier
    from storage.db import make_engine, migrate, require_sqlite_file

    path = config_path(args.config)
    if path is None:
        print("usagebot outbox deliver: give --config (the notifiers are read from it)", file=err)
        return 2
    config = load_or_report(lambda: _notifier_config(path), err)
    if config is None:
        return 1
    now = time_or_now(args.at, "--at", err, "outbox")
    if now is None:
        return 2
    engine = make_engine(require_sqlite_file(args.db or config.storage_url, "there is no outbox to deliver from"))
    try:
        migrate(engine)
        notifiers = build_notifiers(config.notifiers, engine, config.slack, out=out)
        outlets = [NoticeOutlet(n) for n in notifiers]
        for n in notifiers:
            if isinstance(n, SlackNotifier):
                from integrations.slack.updates import SlackUpdates

                outlets.append(SlackUpdates(n))  # type: ignore[arg-type]
        total = DeliveryReport()
        for outlet in outlets:
            report = deliver_rows(engine, outlet, now)
            total.add(report)
            print(f"{outlet.name}: {report.sent} sent, {report.failed} not sent ({report.not_sent()})", file=out)
        for e in total.errors:
            print(e, file=err)
        return 0 if total.failed == total.deferred else 1
    finally:
        engine.dispose()


def _notifier_config(path: str) -> Any:
    """The config, every section checked but the rule files (delivering needs no rules)."""
    from bot.config.app import check_config
    from rules.config import ConfigError

    config, problems = check_config(path, validate_rules=False)
    if problems:
        raise ConfigError(problems)
    return config


def register(sub: argparse._SubParsersAction) -> None:
    """Add `usagebot outbox ...` to the top-level parser."""
    g = add_group(sub, "outbox", "the outbox: list rows, queue dead ones again, deliver due ones once")
    ls = add_command(g, "list", "outbox rows, newest first, with their status and last error",
                     ["usagebot outbox list --status dead", "usagebot outbox list --kind notify:ops --limit 20"])
    ls.add_argument("--status", choices=["pending", "failed", "dead", "sent"], help="only rows of this status")
    ls.add_argument("--kind", metavar="KIND", help="only rows of this kind (notify:slack, notify:<webhook name>, ...)")
    ls.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    rt = add_command(g, "retry", "queue dead rows again with a fresh attempt count (all, or the ids given)",
                     ["usagebot outbox retry", "usagebot outbox retry 118 119"])
    rt.add_argument("ids", nargs="*", type=int, metavar="ID", help="row ids (default: every dead row)")
    dv = add_command(g, "deliver", "deliver every configured notifier's due rows once (as the service's deliver "
                                   "job does)", ["usagebot outbox deliver --config config.toml"])
    dv.add_argument("--at", metavar="TIME", help="the time to deliver at (ISO-8601; default now)")
    for p in (ls, rt, dv):
        add_db_option(p)
        add_config_option(p, " whose [storage] url is used")
    ls.set_defaults(func=cmd_list)
    rt.set_defaults(func=cmd_retry)
    dv.set_defaults(func=cmd_deliver)
