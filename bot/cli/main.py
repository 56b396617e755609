"""The `usagebot` command line.

Exit codes: 0 success, 1 problems found in the input (rules, CSV rows),
2 usage errors (missing file, bad flag value).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from bot import __version__
from bot.cli.support import (
    DB_ENV,
    DEFAULT_DATA_DIR,
    SHIPPED_RULES,
    add_command,
    add_config_option,
    add_db_option,
    config_path,
    database_url,
    db_url,
    load_or_report,
    load_rules_or_report,
    missing_paths,
)

INGEST_CHUNK_ROWS = 200_000  # CSV rows parsed per chunk by `usagebot ingest` (memory ~ one chunk)


def _report_bad_rows(exc: Exception, consequence: str, err: TextIO) -> int:
    """Every bad CSV row (file:line: column: value), what was not done, and how to go on; exit code 1."""
    errors = getattr(exc, "errors", [])
    for e in errors:
        print(str(e), file=err)
    print(f"{len(errors)} bad row(s); {consequence}. Fix them, or pass --on-error skip "
          f"(with --rejects FILE to keep the bad rows).", file=err)
    return 1


def _ingest_bar(path: str, err: TextIO) -> Any:
    """The progress bar of `ingest` (rows of the usage file; off when stderr is not a terminal)."""
    from bot.progress import count_rows, on_terminal, progress

    return progress(f"loading {Path(path).name}", total=count_rows(path) if on_terminal(err) else None,
                    unit=" rows", stream=err)


def _report_skipped(errors: Sequence[Any], verbose: bool, err: TextIO, shown: int = 20) -> None:
    """Skipped rows: the first `shown` of them (every one with --verbose), then how many more."""
    for e in errors if verbose else errors[:shown]:
        print(f"skipped: {e}", file=err)
    if not verbose and len(errors) > shown:
        print(f"... and {len(errors) - shown:,} more skipped row(s) (--verbose lists them; --rejects FILE keeps "
              "them)", file=err)


# ---------------------------------------------------------------------------- commands


def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Validate rule files; with --db or --usage also check them against the data (rules.lint)."""
    from rules.lint import lint
    from rules.loader import check_rules

    if missing_paths(args.paths, "check", err):
        return 2
    data_files = [p for p in (args.usage, args.accounts) if p]
    if missing_paths(data_files, "--usage/--accounts", err):
        return 2
    ruleset, problems = check_rules(args.paths)
    for p in problems:
        print(str(p), file=out)
    if problems:
        print(f"\n{len(problems)} problem(s) found.", file=out)
        return 1
    assert ruleset is not None
    facts = _data_facts(args, err)
    if facts is False:
        return 2
    findings = lint(ruleset, facts or None, max_memory=args.max_memory)
    for p in findings:
        print(str(p), file=out)
    errors = [p for p in findings if p.level == "error"]
    warnings = len(findings) - len(errors)
    if errors:
        print(f"\n{len(errors)} problem(s), {warnings} warning(s) found.", file=out)
        return 1
    kinds: dict[str, int] = {}
    for r in ruleset.rules:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    against = f"; checked against {facts.source}" if facts else ""
    noted = f", {warnings} warning(s)" if warnings else ""
    print(f"{'' if not findings else chr(10)}OK: {len(ruleset.rules)} rules in {len(ruleset.files)} file(s) "
          f"({detail}){against}{noted}.", file=out)
    return 1 if warnings and args.strict else 0


def _data_facts(args: argparse.Namespace, err: TextIO) -> Any:
    """rules.lint.DataFacts of --db or --usage/--accounts; None without them, False when unusable."""
    if args.db and (args.usage or args.accounts):
        print("check: give --db or --usage/--accounts, not both", file=err)
        return False
    if args.db:
        from storage.db import current_revision, make_engine, redact_url
        from storage.facts import data_facts

        url = args.db
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            print(f"check: --db {redact_url(url)}: no such database file", file=err)
            return False
        engine = make_engine(url)
        try:
            if current_revision(engine) is None:
                print(f"check: --db {redact_url(url)}: not a usagebot database (no schema)", file=err)
                return False
            return data_facts(engine)
        finally:
            engine.dispose()
    if args.usage or args.accounts:
        from integrations.sources.csv_rows import CsvInputError, read_accounts_csv, read_usage_csv
        from rules.lint import facts_from

        try:
            records = read_usage_csv(args.usage).records if args.usage else []
            accounts = read_accounts_csv(args.accounts).records if args.accounts else []
        except CsvInputError as exc:
            _report_bad_rows(exc, "nothing was checked against the data", err)
            return False
        return facts_from(records, accounts, " + ".join(Path(p).name for p in (args.usage, args.accounts) if p))
    return None


def _memory(text: str) -> int:
    """A memory size such as 4GiB, 512MiB or 2000000000 (bytes)."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    t = text.strip().lower().replace(" ", "")
    for unit, size in units.items():
        if t.endswith(unit) and t[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * size)
    if t.isdigit():
        return int(t)
    raise argparse.ArgumentTypeError(f"{text!r} is not a memory size such as 4GiB or 512MiB")


def cmd_backtest(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bot.backtest.run import BacktestError, json_line, parse_time, run_backtest, write_table
    from integrations.notice import AlertNotice
    from integrations.sources.csv_rows import CsvInputError

    paths = [args.usage] + ([args.accounts] if args.accounts else [])
    if missing_paths(args.rules, "--rules", err) or missing_paths(paths, "--usage/--accounts", err):
        return 2
    try:
        start = parse_time(args.start, "--from") if args.start else None
        end = parse_time(args.end, "--to") if args.end else None
    except BacktestError as exc:
        print(f"usagebot backtest: {exc}", file=err)
        return 2
    pricing = None
    path = config_path(args.config)
    if path is not None:  # the service's [pricing]: money in each alert, renewals' raised severity
        from bot.config.app import load_config

        if missing_paths([path], "--config", err):
            return 2
        config = load_or_report(lambda: load_config(path), err)
        if config is None:
            return 1
        pricing = config.pricing
    ruleset = load_rules_or_report(args.rules, err)
    if ruleset is None:
        return 1
    report = None
    if args.report or args.labels or args.compare:
        from bot.backtest.report import ReportRequest

        report = ReportRequest.from_args(args, err)  # labels and old rules checked before the replay
        if report is None:
            return 1 if args.report else 2

    def stream(ev: AlertNotice) -> None:  # json: each event printed as the replay reaches it
        print(json_line(ev), file=out, flush=True)

    try:
        result = run_backtest(ruleset, args.usage, args.accounts, start, end, on_error=args.on_error,
                              rejects_path=args.rejects, first_run=args.first_run, show_progress=True,
                              on_event=stream if args.format == "json" else None, pricing=pricing)
        if report is not None:
            report.write(result, ruleset, start, end, err)
    except CsvInputError as exc:
        return _report_bad_rows(exc, "nothing was replayed", err)
    except BacktestError as exc:
        print(f"usagebot backtest: {exc}", file=err)
        return 1
    for line in result.warnings:
        print(line, file=err)
    for line in result.rejected:
        print(f"skipped: {line}", file=err)
    if result.rejected:
        where = f"; written to {args.rejects}" if args.rejects else ""
        print(f"{len(result.rejected)} bad row(s) skipped{where}.", file=err)
    if args.format != "json":
        write_table(result, ruleset, out)
    return 0


def cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bot.backtest.run import BacktestError, parse_time
    from bot.cli.demo import run_demo

    rule_paths = args.rules or [str(SHIPPED_RULES)]
    ruleset = load_rules_or_report(rule_paths, err)
    if ruleset is None:
        return 1
    try:
        end = parse_time(args.end, "--end") if args.end else None
    except BacktestError as exc:
        print(f"usagebot demo: {exc}", file=err)
        return 2
    if end is None:
        end = (int(time.time()) // 86_400) * 86_400
    run_demo(ruleset, out, data_dir=args.data_dir, n_accounts=args.accounts, days=args.days,
             replay_days=args.replay_days, seed=args.seed, end=end)
    return 0


def cmd_ingest(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Load the files in ONE transaction: the accounts and the usage are stored together, or nothing."""
    from integrations.sources.csv_rows import (
        CsvInputError,
        iter_usage_csv_columns,
        read_accounts_csv,
        write_rejects,
    )
    from storage.accounts import upsert_accounts
    from storage.db import make_engine, migrate, redact_url, write_transaction
    from storage.usage import UsageValueError, checkpoint, load_usage

    files = [p for p in (args.accounts, args.usage) if p]
    if not files:
        print("usagebot ingest: give --usage and/or --accounts", file=err)
        return 2
    if missing_paths(files, "ingest", err):
        return 2
    started = time.monotonic()
    url = db_url(args)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    nothing = f"nothing was stored ({' and '.join(files)} not stored)"
    try:
        migrate(engine)
        errors = []
        read = n_accounts = n_buckets = 0
        try:
            accounts = read_accounts_csv(args.accounts, on_error=args.on_error) if args.accounts else None
            if accounts is not None:
                errors += accounts.errors
            bar = None

            def usage_chunks() -> Iterator[Any]:
                # Streamed: memory stays at one chunk; a rejected file rolls the whole command back.
                nonlocal read
                for chunk in iter_usage_csv_columns(args.usage, chunk_rows=INGEST_CHUNK_ROWS,
                                                    on_error=args.on_error):
                    read += len(chunk.records)
                    errors.extend(chunk.errors)
                    if bar is not None:
                        bar.update(len(chunk.records) + len(chunk.errors))
                    yield chunk.records

            def store_accounts(conn: Any) -> None:
                nonlocal n_accounts
                if accounts is not None:
                    n_accounts = upsert_accounts(conn, accounts.records)

            if args.usage:  # the accounts are stored in the load's transaction: together, or nothing
                with _ingest_bar(args.usage, err) as bar:
                    n_buckets = load_usage(engine, usage_chunks(), also=store_accounts)
            else:
                with write_transaction(engine) as conn:
                    store_accounts(conn)
            checkpoint(engine)
        except CsvInputError as exc:
            return _report_bad_rows(exc, nothing, err)
        except UsageValueError as exc:
            print(f"usagebot ingest: {args.usage}: {exc} ({' and '.join(files)} not stored)", file=err)
            return 1
        if args.accounts:
            print(f"{args.accounts}: {n_accounts} account(s) stored", file=out)
        if args.usage:
            print(f"{args.usage}: {read:,} row(s) read, {n_buckets:,} bucket(s) written", file=out)
        _report_skipped(errors, args.verbose, err)
        if errors and args.rejects:
            write_rejects(args.rejects, errors)
            print(f"{len(errors)} bad row(s) written to {args.rejects}", file=err)
        print(f"database: {redact_url(url)}; done in {time.monotonic() - started:.1f} s", file=out)
        return 0
    finally:
        engine.dispose()


def cmd_evaluate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """One evaluation cycle. Notifications are queued for the configured notifiers (with --config:
    every notifier the service would run, integrations.notifiers; else the console) and delivered
    only to the console here; another notifier's rows are left to it (the service, `usagebot slack
    deliver`) unless --deliver says this run should deliver them."""
    from bot.backtest.run import BacktestError, parse_time
    from bot.cli.support import load_or_report
    from bot.progress import activity
    from bot.service.notices import Notices
    from bot.service.pipeline import DeliveryReport, deliver_outbox, run_cycle
    from integrations.console import ConsoleNotifier
    from integrations.notifiers import build_notifiers
    from storage.db import make_engine, migrate, require_sqlite_file

    if missing_paths(args.rules, "--rules", err):
        return 2
    config = None
    path = config_path(args.config)
    if path is not None:
        from bot.config.app import load_config

        if missing_paths([path], "--config", err):
            return 2
        config = load_or_report(lambda: load_config(path), err)
        if config is None:
            return 1
    ruleset = load_rules_or_report(args.rules, err)
    if ruleset is None:
        return 1
    try:
        now = parse_time(args.at, "--at") if args.at else int(time.time())
    except BacktestError as exc:
        print(f"usagebot evaluate: {exc}", file=err)
        return 2
    url = database_url(args.db, config.storage_url if config else None)
    engine = make_engine(require_sqlite_file(url, "`usagebot evaluate` evaluates a book and creates none"))
    try:
        migrate(engine)
        notifiers = (build_notifiers(config.notifiers, engine, config.slack, out=out) if config
                     else [ConsoleNotifier(out=out)])
        consoles = [n for n in notifiers if isinstance(n, ConsoleNotifier)]
        remote = [n for n in notifiers if not isinstance(n, ConsoleNotifier)]
        notices = Notices(tuple(n.name for n in notifiers), config.service.admin_channel if config else None,
                          args.first_run or (config.evaluation.first_run if config else "digest"),
                          **({"pricing": config.pricing} if config and config.pricing else {}))
        with activity(f"evaluating {len(ruleset.rules)} rule(s)", err):
            report = run_cycle(engine, ruleset, now, only_due=False, notices=notices)
        delivery = DeliveryReport()
        for c in consoles:
            delivery.add(deliver_outbox(engine, c, now))  # the console's own rows
        if remote and not consoles:
            for alert in report.alerts:  # a preview: the rows stay queued for their notifier
                if alert.notified:
                    ConsoleNotifier(out=out).deliver(alert)
        if remote and args.deliver:
            for n in remote:
                delivery.add(deliver_outbox(engine, n, now))
        print(_evaluate_line(report, delivery, [n.name for n in remote], bool(consoles), args.deliver), file=out)
        return 0 if not delivery.failed else 1
    finally:
        engine.dispose()


def _evaluate_line(report: Any, delivery: Any, remote: list[str], console: bool, delivered: bool) -> str:
    fired = sum(1 for t in report.transitions if t.event == "fired")
    resolved = sum(1 for t in report.transitions if t.event == "resolved")
    held = sum(1 for t in report.transitions if t.reason == "first evaluation")
    line = (f"evaluated {len(report.rules_evaluated)} rule(s): {report.findings} condition(s) holding, "
            f"{fired} fired, {resolved} resolved")
    if held:
        line += f" ({held} already true at the first evaluation: recorded, not notified)"
    names = ", ".join(remote)
    if not remote or delivered:
        line += f", {delivery.sent} notification(s) sent{f' to {names}' if remote else ''}, {delivery.failed} failed"
    else:
        queued = sum(1 for a in report.alerts if a.notified)
        how = " or `usagebot slack deliver`" if "slack" in remote else ""
        line += (f"{f', {delivery.sent} printed' if console else ''}, {queued} notification(s) queued for {names}"
                 f" (the service{how} sends them; --deliver sends them now)")
    return line


# ------------------------------------------------------------------------------ parser


DESCRIPTION = """\
Usage alerts for B2B SaaS teams: rules over metered usage, Slack alerts, Salesforce usage health.

Start here:
  usagebot demo                                  the whole pipeline on a synthetic book (no setup)
  usagebot init my-usagebot --demo               a config, rules and data folder to run the service on
  usagebot serve --config my-usagebot/config.toml

Settings come from a flag, else the environment (USAGEBOT_DB_URL, USAGEBOT_CONFIG, ...), else the
config file, else the default (docs/operations.md, "Settings"). `usagebot COMMAND --help` shows a
command's options and examples."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="usagebot", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"usagebot {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    c = add_command(sub, "check", "validate rule files; every problem with file, line, rule and field; with "
                    "--db or --usage also against the data",
                    ["usagebot check rules/", "usagebot check rules/default.toml rules/team.toml",
                     "usagebot check rules/ --db sqlite:///usagebot-data/usagebot.db",
                     "usagebot check rules/ --usage usage.csv --accounts accounts.csv --strict"])
    c.add_argument("paths", nargs="+", metavar="RULES", help="rule files or directories of *.toml")
    c.add_argument("--db", help="also check against this database (read only): metrics without data, quota rules "
                                "without quotas, memory per evaluation")
    c.add_argument("--usage", help="also check against this usage CSV (timestamp,account,metric,value)")
    c.add_argument("--accounts", help="... and this accounts CSV (quotas, plans)")
    c.add_argument("--max-memory", type=_memory, default="4GiB",
                   help="refuse a rule whose evaluation would need more memory than this (default 4GiB)")
    c.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    c.set_defaults(func=cmd_check)

    b = add_command(sub, "backtest", "replay rules over a usage CSV, bucket by bucket, without look-ahead",
                    ["usagebot backtest --rules rules/ --usage usage.csv --accounts accounts.csv",
                     "usagebot backtest --rules rules/ --usage usage.csv --from 2026-10-01 --format json",
                     "usagebot backtest --rules new.toml --usage u.csv --accounts a.csv --report out.html "
                     "--labels labels.csv --compare old.toml"])
    b.add_argument("--rules", action="append", required=True, metavar="PATH",
                   help="rule file or directory (repeatable)")
    b.add_argument("--usage", required=True, metavar="CSV", help="usage CSV: timestamp,account,metric,value")
    b.add_argument("--accounts", metavar="CSV",
                   help="accounts CSV: id,name,owner_email,plan,crm_id[,quota.<metric>...]")
    b.add_argument("--from", dest="start", metavar="TIME",
                   help="first evaluation after this time (ISO-8601; UTC if no offset)")
    b.add_argument("--to", dest="end", metavar="TIME", help="last evaluation at or before this time")
    b.add_argument("--format", choices=["table", "json"], default="table",
                   help="table (default: events, then a per-rule summary) or json (one object per line)")
    b.add_argument("--on-error", choices=["reject", "skip"], default="reject",
                   help="bad CSV rows: reject the run (default) or skip them")
    b.add_argument("--rejects", metavar="CSV",
                   help="with --on-error skip: write skipped rows here (with an _error column)")
    b.add_argument("--first-run", choices=["digest", "quiet", "notify"], default="digest",
                   help="as the service's [evaluation] first_run: conditions already true at the first "
                        "evaluation are recorded, not notified (digest, quiet) or notified (notify)")
    add_config_option(b, " whose [pricing] prices each alert and raises the severity of renewing accounts' alerts,"
                         " as the service does")
    b.add_argument("--report", metavar="HTML", help="also write one self-contained HTML report: per-rule summary, "
                                                    "alerts per day, the accounts with the most alerts with charts")
    b.add_argument("--labels", metavar="CSV", help="with --report: outcome labels (account,metric,start,end,kind): "
                                                   "precision and recall per rule")
    b.add_argument("--compare", action="append", metavar="OLD", help="with --report: the rules before a change "
                   "(file or directory, repeatable): what the change adds and removes, side by side")
    b.set_defaults(func=cmd_backtest)

    d = add_command(sub, "demo", "run the whole pipeline on a synthetic book (SQLite, console, CRM dry run)",
                    ["usagebot demo", "usagebot demo --accounts 200 --days 180 --seed 3"])
    d.add_argument("--rules", action="append", metavar="PATH",
                   help="rule files (default: the shipped example rules)")
    d.add_argument("--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR",
                   help=f"where the demo database and CSV files go (default ./{DEFAULT_DATA_DIR})")
    d.add_argument("--accounts", type=int, default=60, metavar="N", help="synthetic accounts (default 60)")
    d.add_argument("--days", type=int, default=120, metavar="N", help="days of usage history (default 120)")
    d.add_argument("--replay-days", type=int, default=30, metavar="N",
                   help="last days replayed as the scheduler would (default 30)")
    d.add_argument("--seed", type=int, default=7, metavar="N", help="random seed of the book (default 7)")
    d.add_argument("--end", metavar="DATE", help="last day of the book (default: today, UTC)")
    d.set_defaults(func=cmd_demo)

    i = add_command(sub, "ingest", "load usage and/or accounts CSV files into the database",
                    ["usagebot ingest --usage history.csv --accounts accounts.csv",
                     "usagebot ingest --usage u.csv --db postgresql://usagebot@db/usagebot --on-error skip "
                     "--rejects bad.csv"])
    i.add_argument("--usage", metavar="CSV", help="usage CSV: timestamp,account,metric,value")
    i.add_argument("--accounts", metavar="CSV", help="accounts CSV: id,name,owner_email,plan,crm_id[,quota.<metric>...]")
    add_db_option(i)
    add_config_option(i, " whose [storage] url is used")
    i.add_argument("--on-error", choices=["reject", "skip"], default="reject",
                   help="bad CSV rows: reject the file (default, nothing stored) or skip them")
    i.add_argument("--rejects", metavar="CSV", help="with --on-error skip: write skipped rows here")
    i.add_argument("--verbose", action="store_true", help="list every skipped row (default: the first 20)")
    i.set_defaults(func=cmd_ingest)

    e = add_command(sub, "evaluate", "run one evaluation cycle on the database and print notifications",
                    ["usagebot evaluate --rules rules/", "usagebot evaluate --rules rules/ --at 2026-11-24T00:00Z",
                     "usagebot evaluate --rules rules/ --config config.toml --deliver"])
    e.add_argument("--rules", action="append", required=True, metavar="PATH",
                   help="rule file or directory (repeatable)")
    add_db_option(e)
    add_config_option(e, ": its notifiers get the notifications (Slack when [slack] is set up), its database "
                         "and first_run policy apply")
    e.add_argument("--at", metavar="TIME", help="evaluation time (ISO-8601; default: now)")
    e.add_argument("--deliver", action="store_true",
                   help="also deliver the queued notifications of the configured notifier (e.g. post to Slack) "
                        "now; without it only the console ones are printed and the rest wait for the service")
    e.add_argument("--first-run", choices=["digest", "quiet", "notify"],
                   help="conditions already true at a first evaluation: digest (default: record, one admin "
                        "summary), quiet (record only) or notify (one by one)")
    e.set_defaults(func=cmd_evaluate)

    # Subcommands that live with their integrations.
    from bot.cli import crm, db, init, outbox, serve, slack, web

    for module in (init, serve, db, slack, crm, outbox, web):
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    import logging

    from rules.config.redaction import RedactingStream, install_on, mask

    # every secret of the config (and of --db / $USAGEBOT_DB_URL) is masked in what the CLI prints or logs
    out = RedactingStream(out or sys.stdout)  # type: ignore[assignment]
    err = RedactingStream(err or sys.stderr)  # type: ignore[assignment]
    if logging.lastResort is not None:
        install_on(logging.lastResort)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `usagebot`: the help, not a usage error
        parser.print_help(out)
        return 0
    from sqlalchemy.exc import DBAPIError

    from rules.config import ConfigError
    from storage.db import StorageError, redact_url

    try:
        return int(args.func(args, out, err))
    except ConfigError as exc:
        for problem in exc.problems:
            print(str(problem), file=err)
        print(f"{len(exc.problems)} problem(s) in the config; nothing was done.", file=err)
        return 1
    except StorageError as exc:
        print(f"usagebot {args.command}: {exc}", file=err)
        return 1
    except DBAPIError as exc:
        # Driver messages can echo connection parameters: show the redacted URL and the
        # first line of the driver's reason with any URL in it redacted.
        url = getattr(args, "db", None) or os.environ.get(DB_ENV) or ""
        reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
        print(f"usagebot {args.command}: database error on {redact_url(url) or 'the database'}: "
              f"{redact_url(reason)}", file=err)
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one masked line, no traceback (it goes to the debug log)
        logging.getLogger("bot.cli.main").debug("usagebot %s failed", args.command, exc_info=True)
        print(f"usagebot {args.command}: unexpected {type(exc).__name__}: {mask(exc)} (this is a bug; "
              "please report it with the command you ran)", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
