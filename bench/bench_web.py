"""Page load times of the web UI at 10k and 100k accounts (real HTTP, server-side rendering included).

    .venv/bin/python -m bench.bench_web                               # 10k and 100k accounts, SQLite
    .venv/bin/python -m bench.bench_web --accounts 10000 --repeat 5   # quicker
    .venv/bin/python -m bench.bench_web --json

For each size, a book is built once in --workdir (kept and reused by later runs): the synthetic demo
book (3 metrics x --days daily buckets) loaded with storage.usage.load_usage, owners reassigned so
that each owns --accounts-per-owner accounts (a realistic book of an account executive), the shipped
rules run by bot.service.pipeline.run_cycle on the last two days (real episodes, audit events, outbox), and
resolved episodes of earlier months added (copies of those, shifted back by whole months, each with
its pending / fired / resolved events) up to --episodes-per-account episodes per account.

Each page is then fetched through the UI's real HTTP server (bot.service.http_server, as `usagebot serve`
mounts it) with one keep-alive client: one warm-up, then --repeat timed fetches; the median and the
slowest are shown. Both sizes are measured in the same run, side by side, and the alert list pages
are measured again at the largest size with the indexes of migration 0011_web_ui_indexes dropped
(then recreated), to show what they buy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

MONTH = 30 * 86_400
INDEXES = {  # migration 0011_web_ui_indexes
    "ix_alert_episodes_started": ("alert_episodes", "started_at, id"),
    "ix_alert_episodes_status_started": ("alert_episodes", "status, started_at, id"),
    "ix_alert_episodes_rule_started": ("alert_episodes", "rule_id, started_at, id"),
    "ix_accounts_owner_email": ("accounts", "owner_email"),
}


def _log(msg: str) -> None:
    print(f"[bench_web {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(path: Path, n: int, days: int, per_owner: int, per_account: float) -> dict[str, Any]:
    """The book at `path` (made unless it is there); returns its facts (end, counts)."""
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return dict(json.loads(meta_path.read_text()))
    from bot.service.pipeline import run_cycle
    from integrations.sources.demo import generate_book
    from rules.loader import load_rules
    from rules.model import DAY
    from storage.accounts import upsert_accounts
    from storage.db import make_engine, migrate
    from storage.usage import UPSERT_CHUNK, in_chunks, load_usage

    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    t0 = time.perf_counter()
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    book = generate_book(n_accounts=n, days=days, seed=11, metrics=("api_calls", "events", "exports"))
    upsert_accounts(engine, book.accounts, now=book.end)
    rows = load_usage(engine, in_chunks(book.records(), UPSERT_CHUNK))
    _log(f"{n:,} accounts: {rows:,} usage buckets loaded in {time.perf_counter() - t0:.0f}s")
    owners = max(1, n // per_owner)
    with engine.begin() as conn:  # an account executive owns `per_owner` accounts
        ids = list(conn.execute(sa.text("SELECT id FROM accounts ORDER BY id")).scalars())
        conn.execute(sa.text("UPDATE accounts SET owner_email = :e WHERE id = :i"),
                     [{"e": f"ae{k % owners:05d}@example.com", "i": a} for k, a in enumerate(ids)])
    ruleset = load_rules([str(Path(__file__).resolve().parent.parent / "rules" / "examples" / "default.toml")])
    t1 = time.perf_counter()
    for at in (book.end - DAY, book.end):
        run_cycle(engine, ruleset, at, only_due=False)
    _log(f"{n:,} accounts: two daily cycles in {time.perf_counter() - t1:.0f}s")
    _add_history(engine, n, per_account)
    with engine.connect() as conn:
        counts = {t: int(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one())
                  for t in ("accounts", "alert_episodes", "alert_events", "usage_points")}
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    meta = {"end": book.end, "accounts": n, "owners": owners, "counts": counts,
            "build_s": round(time.perf_counter() - t0, 1)}
    meta_path.write_text(json.dumps(meta))
    return meta


def _add_history(engine: Any, n: int, per_account: float) -> None:
    """Resolved episodes of earlier months: copies of the real ones shifted back, with their events."""
    cols = ("rule_id", "account_id", "metric", "discriminator", "status", "started_at", "fired_at", "resolved_at",
            "last_notified_at", "consecutive", "once", "severity", "last_seen_at", "last_explanation",
            "acknowledged_by", "acknowledged_at", "snoozed_until", "rule_hash", "slack_channel", "slack_ts",
            "reference", "clear_count", "recovering_since", "cleared_at", "held")
    with engine.begin() as conn:
        real = int(conn.execute(sa.text("SELECT count(*) FROM alert_episodes")).scalar_one())
        top = int(conn.execute(sa.text("SELECT max(id) FROM alert_episodes")).scalar_one() or 0)
        copies = max(0, math.ceil(per_account * n / max(1, real)) - 1)
        for k in range(1, copies + 1):
            shift = k * MONTH
            sel = ", ".join({
                "discriminator": f"discriminator || ':m{k}'", "status": "'resolved'",
                "started_at": f"started_at - {shift}", "fired_at": f"coalesce(fired_at, started_at) - {shift}",
                "resolved_at": f"started_at - {shift} + 7 * 86400", "last_seen_at": f"started_at - {shift}",
                "last_notified_at": f"coalesce(fired_at, started_at) - {shift}",
                "acknowledged_by": "CASE WHEN id % 3 = 0 THEN 'U0ALICE01 (alice)' END",
                "acknowledged_at": f"CASE WHEN id % 3 = 0 THEN started_at - {shift} + 3600 END",
            }.get(c, c) for c in cols)
            conn.exec_driver_sql(f"INSERT INTO alert_episodes ({', '.join(cols)}) SELECT {sel} FROM alert_episodes "
                                 f"WHERE id <= {top}")
        for event, at in (("pending", "started_at"), ("fired", "fired_at"), ("resolved", "resolved_at")):
            conn.exec_driver_sql(
                "INSERT INTO alert_events (episode_id, event, at, notify, reason, actor, explanation) "
                f"SELECT id, '{event}', {at}, 1, '', NULL, last_explanation FROM alert_episodes "
                f"WHERE id > {top} AND {at} IS NOT NULL")
        conn.exec_driver_sql(
            "INSERT INTO alert_events (episode_id, event, at, notify, reason, actor, explanation) "
            "SELECT id, 'acknowledged', acknowledged_at, 0, 'Acknowledge button in Slack', acknowledged_by, '{}' "
            f"FROM alert_episodes WHERE id > {top} AND acknowledged_by IS NOT NULL")
    _log(f"{n:,} accounts: {real:,} episodes from the cycles, {copies} month(s) of history copies added")


def pages(engine: Any, meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, URL) of the pages to time, on facts of this book."""
    with engine.connect() as conn:
        drop = conn.execute(sa.text("SELECT id, account_id, rule_id FROM alert_episodes WHERE status = 'firing' "
                                    "ORDER BY id LIMIT 1")).one()
        owner = conn.execute(sa.text("SELECT owner_email FROM accounts WHERE id = :a"), {"a": drop.account_id}).scalar()
        name = conn.execute(sa.text("SELECT name FROM accounts WHERE id = :a"), {"a": drop.account_id}).scalar()
        mid = conn.execute(sa.text("SELECT started_at, id FROM alert_episodes ORDER BY started_at DESC, id DESC "
                                   "LIMIT 1 OFFSET 5000")).one()
    from datetime import UTC, datetime

    day = datetime.fromtimestamp(meta["end"] - 45 * 86_400, UTC).strftime("%Y-%m-%d")
    to = datetime.fromtimestamp(meta["end"] - 30 * 86_400, UTC).strftime("%Y-%m-%d")
    return [
        ("alert list, first page", "/alerts"),
        ("alert list, page 101 (keyset)", f"/alerts?after={mid.started_at}.{mid.id}"),
        ("alerts: state=firing", "/alerts?state=firing"),
        ("alerts: rule", f"/alerts?rule={drop.rule_id}"),
        ("alerts: kind=drop", "/alerts?kind=drop"),
        ("alerts: owner (an AE's accounts)", f"/alerts?owner={owner}"),
        ("alerts: account id", f"/alerts?account={drop.account_id}"),
        ("alerts: account name search", f"/alerts?account={str(name).split()[0].lower()}"),
        ("alerts: started from/to (15 days)", f"/alerts?from={day}&to={to}"),
        ("alerts: owner + state=open", f"/alerts?owner={owner}&state=open"),
        ("episode page (chart)", f"/episodes/{drop.id}"),
        ("account page (3 metrics, charts)", f"/accounts/{drop.account_id}"),
    ]


def timed(client: Any, base: str, url: str, repeat: int) -> tuple[float, float]:
    r = client.get(base + url)
    if r.status_code != 200:
        raise SystemExit(f"bench_web: GET {url} answered {r.status_code}: {r.text[:200]}")
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = client.get(base + url)
        r.read()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times)


def serve(engine: Any, now: int) -> Any:
    from bot.config.web import WebConfig
    from bot.service.http_server import HttpServer
    from bot.web.app import WebUI
    from rules.loader import load_rules

    ruleset = load_rules([str(Path(__file__).resolve().parent.parent / "rules" / "examples" / "default.toml")])
    ui = WebUI(WebConfig(anonymous=True, page_size=50), engine, lambda: ruleset, clock=lambda: now)
    server = HttpServer("127.0.0.1", 0, ui.routes())
    server.start()
    return server


def measure(path: Path, meta: dict[str, Any], repeat: int, without_indexes: bool) -> dict[str, Any]:
    import httpx

    from storage.db import make_engine

    engine = make_engine(f"sqlite:///{path}")
    out: dict[str, Any] = {}
    server = serve(engine, meta["end"] + 3600)  # "now" at the book's end (its charts)
    try:
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client(timeout=300) as client:
            for name, url in pages(engine, meta):
                out[name] = timed(client, base, url, repeat)
            if without_indexes:
                with engine.begin() as conn:
                    for ix in INDEXES:
                        conn.exec_driver_sql(f"DROP INDEX {ix}")
                    conn.exec_driver_sql("ANALYZE")
                try:
                    for name, url in pages(engine, meta):
                        if url.startswith("/alerts"):
                            out[f"{name} [no 0011 indexes]"] = timed(client, base, url, max(1, repeat // 2))
                finally:
                    with engine.begin() as conn:
                        for ix, (table, cols) in INDEXES.items():
                            conn.exec_driver_sql(f"CREATE INDEX {ix} ON {table} ({cols})")
                        conn.exec_driver_sql("ANALYZE")
    finally:
        server.stop()
        engine.dispose()
    return out


def machine() -> dict[str, Any]:
    import sqlite3

    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_web", description=__doc__.split("\n")[0])
    p.add_argument("--accounts", default="10000,100000", help="book sizes, comma-separated (default 10000,100000)")
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--accounts-per-owner", type=int, default=100)
    p.add_argument("--episodes-per-account", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--workdir", default="bench-web-data", help="where the books are kept (default ./bench-web-data)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.accounts.split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    metas = {n: build(work / f"book-{n}.db", n, args.days, args.accounts_per_owner, args.episodes_per_account)
             for n in sizes}
    results = {n: measure(work / f"book-{n}.db", metas[n], args.repeat, without_indexes=n == max(sizes))
               for n in sizes}
    report = {"machine": machine(), "books": metas, "results": {n: {k: list(v) for k, v in r.items()}
                                                                   for n, r in results.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(render(report, sizes))
    return 0


def render(report: dict[str, Any], sizes: list[int]) -> str:
    m = report["machine"]
    lines = [f"machine: {m['cpu']}, {m['cpus']} cores, Python {m['python']}, SQLite {m['sqlite']}", ""]
    for n in sizes:
        c = report["books"][n]["counts"]
        lines.append(f"book {n:,}: {c['accounts']:,} accounts, {c['usage_points']:,} usage points, "
                     f"{c['alert_episodes']:,} episodes, {c['alert_events']:,} events")
    lines.append("")
    head = "| page | " + " | ".join(f"{n:,} accounts: median (slowest)" for n in sizes)
    head += f" | {sizes[-1]:,} / {sizes[0]:,} |" if len(sizes) > 1 else " |"
    lines += [head, "|" + "---|" * (len(sizes) + 1 + (len(sizes) > 1))]
    names = list(report["results"][sizes[-1]])
    for name in names:
        cells = []
        for n in sizes:
            v = report["results"][n].get(name)
            cells.append("—" if v is None else f"{v[0] * 1000:,.0f} ms ({v[1] * 1000:,.0f} ms)")
        row = f"| {name} | " + " | ".join(cells)
        first, last = report["results"][sizes[0]].get(name), report["results"][sizes[-1]].get(name)
        if len(sizes) > 1:
            row += f" | {last[0] / first[0]:.1f}x |" if first and last else " | — |"
        else:
            row += " |"
        lines.append(row)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
