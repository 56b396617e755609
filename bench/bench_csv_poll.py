"""The CSV source's poll + store of one big drop file, before and after a change, side by side: each
figure in a fresh process (modules imported before the timed part), the sides alternating.

    .venv/bin/python -m bench.bench_csv_poll --rows 1000000 --baseline-ref f023fdd --rounds 3 [--pg URL]

Per side and round: a fresh database (SQLite file, or a fresh schema of --pg), then
  first   poll_source of a folder holding the file (the whole file parsed and stored: an empty table)
  again   the same file touched (its mtime changed) and polled again: read whole again, every row
          compared with the stored one, nothing rewritten (a corrected drop that changed nothing)
  changed the file replaced by a corrected version where 1% of the values differ: those rows
          rewritten, the rest compared and left
The file: `--accounts` accounts x 4 metrics x as many daily buckets as `--rows` needs, ISO timestamps,
values with fractions, in bucket order (as an export would write it). `before` is the baseline ref
extracted by `git archive` into a temporary folder and run with the same interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from bench.sides import ROOT, baseline_tree, run_json

T0 = 1_793_491_200  # 2026-11-01T00:00:00Z
DAY = 86_400
METRICS = ("api_calls", "seats", "gb.stored", "jobs")

_POLL = r'''
import sys, time, json, os, uuid
from bot.service.polling import poll_source
from integrations.sources.base import parse_source_config
from integrations.sources.csv_source import CsvSource
from rules.config import document_from_text
from storage.db import make_engine, migrate
import sqlalchemy as sa
folder, url, now, changed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if url.startswith("postgresql"):
    schema = "b" + uuid.uuid4().hex[:12]
    base = make_engine(url)
    with base.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    base.dispose()
    url = url + ("&" if "?" in url else "?") + f"options=-csearch_path%3D{schema}"
engine = make_engine(url)
migrate(engine)
doc = document_from_text(f'[[sources]]\nid = "drops"\ntype = "csv"\npath = "{folder}"\nmin_age = "0"\n', "b.toml")
src = CsvSource(parse_source_config(doc.sections("sources")[0]))
out = {}
for step in ("first", "again", "changed"):
    if step == "again":
        for f in os.listdir(folder):
            os.utime(os.path.join(folder, f), (1_000_000_100, 1_000_000_100))
    if step == "changed":  # the corrected drop: 1% of the values differ
        os.replace(changed, os.path.join(folder, "usage.csv"))
        os.utime(os.path.join(folder, "usage.csv"), (1_000_000_200, 1_000_000_200))
    t, c = time.perf_counter(), time.process_time()
    report = poll_source(engine, src, now)
    assert report.ok and not report.rejected, report.error or report.rejected
    out[step] = {"s": time.perf_counter() - t, "cpu": time.process_time() - c, "rows": report.rows,
                 "written": report.points_written}
print(json.dumps(out))
'''


def write_file(path: Path, rows: int, accounts: int, changed: bool = False) -> int:
    days = -(-rows // (accounts * len(METRICS)))
    n = 0
    with open(path, "w") as f:
        f.write("timestamp,account,metric,value\n")
        for d in range(days):
            day = f"2026-11-{1 + d:02d}T00:00:00Z" if d < 30 else None
            stamp = day or _iso(T0 + d * DAY)
            for m in METRICS:
                lines = []
                for a in range(accounts):
                    if n >= rows:
                        break
                    bump = 0.5 if changed and n % 100 == 7 else 0.0  # the corrected file: 1% of the values
                    lines.append(f"{stamp},acct-{a:06d},{m},{(a * 7 + d * 13) % 1000 + 0.25 * (a % 4) + bump}\n")
                    n += 1
                f.write("".join(lines))
    os.utime(path, (1_000_000_000, 1_000_000_000))
    return n


def _iso(ts: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(code_root: Path, folder: Path, url: str, changed: Path) -> dict:
    return run_json(code_root, _POLL, str(folder), url, str(T0 + 400 * DAY), str(changed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--baseline-ref", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg", help="a PostgreSQL URL (a fresh schema per run) instead of SQLite files")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        before = baseline_tree(args.baseline_ref, work)
        folder = work / "drops"
        folder.mkdir()
        original, corrected = work / "usage.csv", work / "usage-changed.csv"
        n = write_file(original, args.rows, args.accounts)
        write_file(corrected, args.rows, args.accounts, changed=True)
        shutil.copyfile(original, folder / "usage.csv")
        print(f"file: {n} rows, {(folder / 'usage.csv').stat().st_size / 1e6:.1f} MB; load {os.getloadavg()[0]:.1f}")
        results: dict[str, list[dict]] = {"before": [], "after": []}
        for r in range(args.rounds):
            for side, root in (("before", before), ("after", ROOT)) if r % 2 == 0 else (("after", ROOT), ("before", before)):
                shutil.copyfile(original, folder / "usage.csv")  # the last run's "changed" step replaced it
                shutil.copyfile(corrected, work / "changed.csv")
                os.utime(folder / "usage.csv", (1_000_000_000, 1_000_000_000))
                url = args.pg or f"sqlite:///{work / f'{side}-{r}.db'}"
                res = run(root, folder, url, work / "changed.csv")
                results[side].append(res)
                if not args.pg:
                    os.unlink(work / f"{side}-{r}.db")
                print(json.dumps({"round": r, "side": side, **res, "load": round(os.getloadavg()[0], 1)}), flush=True)
        for step in ("first", "again", "changed"):
            b = sorted(x[step]["s"] for x in results["before"])
            a = sorted(x[step]["s"] for x in results["after"])
            bc = sorted(x[step]["cpu"] for x in results["before"])
            ac = sorted(x[step]["cpu"] for x in results["after"])
            mb, ma = b[len(b) // 2], a[len(a) // 2]
            print(f"{step}: median wall {mb:.2f} s -> {ma:.2f} s ({n / mb:,.0f} -> {n / ma:,.0f} rows/s, "
                  f"{mb / ma:.2f}x); median CPU {bc[len(bc) // 2]:.2f} s -> {ac[len(ac) // 2]:.2f} s; "
                  f"walls before {b}, after {a}")


if __name__ == "__main__":
    main()
