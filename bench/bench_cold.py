"""The cold evaluation against its columnar read floor, this checkout and another one side by side.

    .venv/bin/python -m bench.bench_cold --accounts 10000,30000 --before /tmp/before-read
    .venv/bin/python -m bench.bench_cold --accounts 10000 --db-url postgresql+psycopg://u@127.0.0.1/db
    .venv/bin/python -m bench.bench_cold --accounts 10000 --scale 0.37 --keep /tmp/books-frac   # non-integer values

Per account count: the seeded demo book (4 metrics x --days) is ingested once (`usagebot ingest`),
then --rounds rounds, each running one after the other, every one in a fresh process:

  floor   the rows the evaluation needs (bench.raw_floor.ranges_for) read by connectorx into Arrow
          (bench.raw_floor.read_columnar_floor);
  after   this checkout's cold evaluation: the usage tiles emptied (a cache: always safe), a fresh
          engine, load_blocks_for (which builds the tiles) + evaluate + advance of the 12 rules
          (bench.bench_daily._evaluate);
  before  the same with the code of the --before checkout (e.g. `git worktree add /tmp/before X`);
  copy    PostgreSQL only: the same rows' bucket and value columns by COPY BINARY into numpy (the
          service's PostgreSQL read before it packed each bucket into one row), without the
          account ids.

Reported: the median wall time of each and its ratio to the floor's median, plus the CPU time of the
cold evaluations and of the floor's read (each process's own, all its threads: steadier than wall
time on a shared machine, where both wait for the cores; on PostgreSQL the server's CPU is in
neither) with their ratio, and the range of the machine's 1-minute load average over the rounds. The modules the evaluation uses are imported
before its timer, as the floor imports connectorx before its own (a service imports them once). Findings of
before and after must be equal (count and digest). Ingest is not timed here (bench_daily does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# run in a child, with the checkout to measure first on sys.path: prints one JSON line
_COLD = """
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[1])
import pyarrow.compute  # noqa: F401  (imported before the timer, as the floor imports connectorx)
import sqlalchemy as sa
# what _evaluate imports, imported before the timer too (a service imports them once, at its start)
import bot.service.pipeline, rules.engine, rules.lifecycle, storage.accounts  # noqa: E401, F401
from bench.bench_daily import _evaluate
from bench.bench_scale import METRICS4, SHIPPED, bench_rules
from storage.db import make_engine
url, end = sys.argv[2], int(sys.argv[3])
rules = bench_rules(SHIPPED, METRICS4)
engine = make_engine(url)
with engine.begin() as c:  # the tiles are a cache (storage/tiles.py): emptied, the next read builds them
    for t in ("usage_tiles", "usage_tile_rows", "usage_tile_sets", "usage_tile_dirty"):
        c.execute(sa.text(f"DELETE FROM {t}"))
engine.dispose()
engine = make_engine(url)
cpu = time.process_time()
result, _, seconds = _evaluate(engine, rules, end, {})
keys = sorted((f.rule_id, f.account_id, f.metric) for f in result.findings)
print(json.dumps({"s": seconds, "cpu": time.process_time() - cpu, "findings": len(keys),
                  "digest": hashlib.sha256(repr(keys).encode()).hexdigest()[:12]}))
"""

_FLOOR = """
import json, sys
sys.path.insert(0, sys.argv[1])
from bench.bench_scale import METRICS4, SHIPPED, bench_rules
from bench.raw_floor import ranges_for, read_columnar_floor
if __name__ == "__main__":
    url, end, table = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    floor = read_columnar_floor(url, ranges_for(bench_rules(SHIPPED, METRICS4), end), table=table)
    print(json.dumps({"s": floor.seconds, "cpu": floor.cpu, "rows": floor.rows}))
"""

# PostgreSQL only, a second floor: the same rows' fixed-width columns (bucket, value) by COPY BINARY
# into numpy (bench.copy_floor.copy_binary), the account ids left out: less than any read of the rows
_FLOOR_COPY = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from bench.bench_scale import METRICS4, SHIPPED, bench_rules
from bench.raw_floor import ranges_for
from bench.copy_floor import copy_binary, pg_literal
from storage.db import make_engine
url, end = sys.argv[2], int(sys.argv[3])
engine = make_engine(url)
with engine.connect() as conn:
    t0, rows = time.perf_counter(), 0
    for (metric, _step), (lo, hi) in ranges_for(bench_rules(SHIPPED, METRICS4), end).items():
        got = copy_binary(conn, f"SELECT bucket_start::int8, value::float8 FROM usage_points WHERE metric = "
                          f"{pg_literal(conn, metric)} AND bucket_start >= {int(lo)} AND bucket_start < {int(hi)}",
                          ("i8", "f8"))
        rows += len(got[0])
    print(json.dumps({"s": time.perf_counter() - t0, "rows": rows}))
"""


def _child(code: str, *args: str) -> dict[str, Any]:
    """Run `code` in a fresh interpreter (a script file: spawn needs one) and read its JSON line."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    try:
        out = subprocess.run([sys.executable, f.name, *args], check=True, capture_output=True, text=True).stdout
    finally:
        Path(f.name).unlink()
    return json.loads(out.strip().splitlines()[-1])


def _ingest(n_accounts: int, days: int, seed: int, url: str, workdir: Path, scale: float = 1.0) -> int:
    """The demo book into `url` through `usagebot ingest`, every value times `scale` (1: the demo's
    integer counts; e.g. 0.37: a book of non-integer values); returns the evaluation time (book end)."""
    from bench.bench_scale import METRICS4
    from bot.cli.main import main as cli
    from integrations.sources.csv_rows import write_accounts_csv, write_usage_csv
    from integrations.sources.demo import generate_book

    book = generate_book(n_accounts=n_accounts, days=days, seed=seed, metrics=METRICS4)
    if scale != 1.0:
        book.values = {m: v * scale for m, v in book.values.items()}
    usage_csv, accounts_csv = workdir / "usage.csv", workdir / "accounts.csv"
    write_usage_csv(usage_csv, book.records())
    write_accounts_csv(accounts_csv, book.accounts)
    code = cli(["ingest", "--db", url, "--accounts", str(accounts_csv), "--usage", str(usage_csv)],
               out=open("/dev/null", "w"), err=sys.stderr)  # noqa: SIM115
    if code != 0:
        raise SystemExit(f"bench_cold: usagebot ingest exited {code}")
    usage_csv.unlink()
    return int(book.end)


def run_one(n_accounts: int, days: int, seed: int, rounds: int, before: Path | None, db_url: str | None,
            workdir: Path, scale: float = 1.0) -> dict[str, Any]:
    """floor / after / before, interleaved for `rounds` rounds on one ingested book. On SQLite a
    book already in `workdir` (usagebot.db and its `end`, from an earlier run with --keep) is reused."""
    from bench.bench_daily import _fresh_url

    url, table, cleanup = _fresh_url(db_url, workdir)
    try:
        kept = workdir / "end"
        if db_url is None and kept.exists() and (workdir / "usagebot.db").exists():
            end = int(kept.read_text())
        else:
            end = _ingest(n_accounts, days, seed, url, workdir, scale)
            kept.write_text(str(end))
        runs: dict[str, list[dict[str, Any]]] = {"floor": [], "copy": [], "after": [], "before": []}
        loads = [os.getloadavg()[0]]
        for _ in range(rounds):
            runs["floor"].append(_child(_FLOOR, str(ROOT), url, str(end), table))
            if db_url is not None:
                runs["copy"].append(_child(_FLOOR_COPY, str(ROOT), url, str(end)))
            runs["after"].append(_child(_COLD, str(ROOT), url, str(end)))
            if before is not None:
                runs["before"].append(_child(_COLD, str(before), url, str(end)))
            loads.append(os.getloadavg()[0])
    finally:
        cleanup()
    out: dict[str, Any] = {"accounts": n_accounts, "days": days, "rounds": rounds,
                           "floor_rows": runs["floor"][0]["rows"], "load": [min(loads), max(loads)]}
    if runs["copy"]:
        out["copy_rows"] = runs["copy"][0]["rows"]
    for name, got in runs.items():
        if got:
            out[f"{name}_s"] = statistics.median(r["s"] for r in got)
            out[f"{name}_all"] = [round(r["s"], 2) for r in got]
            if "cpu" in got[0]:
                out[f"{name}_cpu"] = statistics.median(r["cpu"] for r in got)
            if name not in ("floor", "copy"):
                out[f"{name}_findings"] = {(r["findings"], r["digest"]) for r in got}
    if before is not None and out["before_findings"] != out["after_findings"]:
        raise SystemExit(f"bench_cold: findings differ: before {out['before_findings']}, "
                         f"after {out['after_findings']}")
    for name in ("after", "before"):
        out.pop(f"{name}_findings", None)
    out["findings"] = runs["after"][0]["findings"]
    return out


def render(results: list[dict[str, Any]]) -> str:
    """A markdown table, one column per account count."""
    def cell(x: dict[str, Any], name: str) -> str:
        if f"{name}_s" not in x:
            return "-"
        if name == "floor":
            return f"{x['floor_s']:.2f} s" + (f" (cpu {x['floor_cpu']:.2f} s)" if "floor_cpu" in x else "")
        if name == "copy":
            return f"{x['copy_s']:.2f} s ({x['copy_s'] / x['floor_s']:.2f}x floor)"
        ratio = f" ({x[f'{name}_s'] / x['floor_s']:.2f}x floor, cpu {x[f'{name}_cpu']:.2f} s"
        if "floor_cpu" in x:
            ratio += f" = {x[f'{name}_cpu'] / x['floor_cpu']:.2f}x the floor's"
        if "copy_s" in x:
            ratio += f"; {x[f'{name}_s'] / x['copy_s']:.2f}x the COPY floor"
        return f"{x[f'{name}_s']:.2f} s{ratio})"

    lines = ["| | " + " | ".join(f"{x['accounts']:,} accounts" for x in results) + " |",
             "|---|" + "---|" * len(results)]
    for label, name in (("columnar read floor (connectorx -> Arrow)", "floor"),
                        ("PostgreSQL: COPY BINARY of (bucket, value) into numpy", "copy"),
                        ("cold evaluation, before", "before"), ("cold evaluation, after", "after")):
        if name == "copy" and not any("copy_s" in x for x in results):
            continue
        lines.append(f"| {label} | " + " | ".join(cell(x, name) for x in results) + " |")
    lines.append("| rows read by the floor / findings (1-minute load average) | " + " | ".join(
        f"{x['floor_rows']:,} / {x['findings']:,} (load {x['load'][0]:.1f}-{x['load'][1]:.1f})"
        for x in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="cold evaluation vs its columnar read floor, before and after")
    p.add_argument("--accounts", default="10000,30000")
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--scale", type=float, default=1.0,
                   help="every value of the book times this (e.g. 0.37: non-integer values); with --keep, "
                        "give each scale its own KEEP directory")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--before", type=Path, help="another checkout to measure side by side (e.g. main)")
    p.add_argument("--db-url", help="a PostgreSQL database (a scratch schema is made and dropped); default SQLite")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep", type=Path, help="SQLite: keep (and reuse) each book in KEEP/<accounts>/")
    a = p.parse_args(argv)
    results = []
    for n in (int(x) for x in a.accounts.split(",")):
        if a.keep and not a.db_url:
            (a.keep / str(n)).mkdir(parents=True, exist_ok=True)
            results.append(run_one(n, a.days, a.seed, a.rounds, a.before, None, a.keep / str(n), a.scale))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                results.append(run_one(n, a.days, a.seed, a.rounds, a.before, a.db_url, Path(tmp), a.scale))
        print(json.dumps(results[-1]), flush=True)
    print(render(results))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
