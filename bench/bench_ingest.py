"""`usagebot ingest` of one big usage CSV end to end, before and after a change, side by side: each
run is the `usagebot` command line in a fresh process (interpreter start, imports, migrations, the
parse, the staged write, the commit and the WAL checkpoint all timed, as a user waits for them),
the sides alternating, a fresh SQLite file (or a fresh PostgreSQL schema with --pg) per run.

    .venv/bin/python -m bench.bench_ingest --rows 1000000 --baseline-ref main --rounds 3 [--pg URL]

The file is bench_csv_poll's (`--accounts` accounts x 4 metrics x as many daily buckets as `--rows`
needs, ISO timestamps, fractional values, in bucket order); `--usage FILE` ingests a file of your own
instead (e.g. bench_daily's book). After each run, untimed, a digest of the stored usage tables
(usage_points, usage_first_seen, usage_coverage, and usage_changes without its changed_at clock) is
taken: the two sides must store identical rows, or the bench exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.bench_csv_poll import write_file
from bench.sides import ROOT, baseline_tree

_DIGEST = r'''
import hashlib, json, sys
import sqlalchemy as sa
url = sys.argv[1]
engine = sa.create_engine(url)
queries = {
    "usage_points": "SELECT account_id, metric, bucket_start, value FROM usage_points",
    "usage_first_seen": "SELECT account_id, metric, first_bucket FROM usage_first_seen",
    "usage_coverage": "SELECT metric, bucket_start FROM usage_coverage",
    # per account: a wide row (migration 0017, a write of new buckets) as the accounts stored in its buckets
    "usage_changes": "SELECT account_id, metric, bucket_start, last_bucket, source_id FROM usage_changes "
                     "WHERE account_id IS NOT NULL UNION ALL SELECT p.account_id, c.metric, p.bucket_start, "
                     "p.bucket_start, c.source_id FROM usage_changes c JOIN usage_points p ON p.metric = c.metric "
                     "AND p.bucket_start BETWEEN c.bucket_start AND c.last_bucket WHERE c.account_id IS NULL",
}
out = {}
with engine.connect() as c:
    for name, q in queries.items():
        rows = sorted(tuple(r) for r in c.exec_driver_sql(q))
        out[name] = [len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()[:16]]
print(json.dumps(out))
'''


def _fresh_url(pg: str | None, work: Path, side: str, r: int) -> tuple[str, Path | None]:
    if pg is None:
        db = work / f"{side}-{r}.db"
        return f"sqlite:///{db}", db
    import sqlalchemy as sa

    schema = "bi" + uuid.uuid4().hex[:12]
    engine = sa.create_engine(pg)
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    return pg + ("&" if "?" in pg else "?") + f"options=-csearch_path%3D{schema}", None


def ingest(code_root: Path, usage: Path, url: str) -> dict:
    """One `usagebot ingest` in a fresh process: wall time, the child's CPU time, its output."""
    env = dict(os.environ, PYTHONPATH=str(code_root))
    cmd = [sys.executable, "-c", "from bot.cli import main; raise SystemExit(main())",
           "ingest", "--usage", str(usage), "--db", url]
    before = os.times()
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=code_root, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    after = os.times()
    if out.returncode:
        raise SystemExit(f"{code_root}: exit {out.returncode}: {out.stderr[-3000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"s": wall, "cpu": cpu, "said": out.stdout.strip().splitlines()[0]}


def digest(url: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _DIGEST, url], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--usage", type=Path, help="ingest this usage CSV instead of the generated one")
    ap.add_argument("--baseline-ref", default="main")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg", help="a PostgreSQL URL (a fresh schema per run) instead of SQLite files")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        before = baseline_tree(args.baseline_ref, work)
        if args.usage:
            usage = args.usage.resolve()
            with open(usage, "rb") as f:
                n = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) - 1
        else:
            usage = work / "usage.csv"
            n = write_file(usage, args.rows, args.accounts)
        print(f"file: {n:,} rows, {usage.stat().st_size / 1e6:.1f} MB; load {os.getloadavg()[0]:.1f}", flush=True)
        results: dict[str, list[dict]] = {"before": [], "after": []}
        digests: dict[str, str] = {}
        for r in range(args.rounds):
            sides = (("before", before), ("after", ROOT))
            for side, root in sides if r % 2 == 0 else sides[::-1]:
                url, db = _fresh_url(args.pg, work, side, r)
                res = ingest(root, usage, url)
                d = digest(url)
                digests.setdefault(side, json.dumps(d, sort_keys=True))
                if json.dumps(d, sort_keys=True) != digests[side]:
                    print(f"{side}: round {r} stored other rows than round 0", file=sys.stderr)
                    return 1
                if db is not None:
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{db}{suffix}").unlink(missing_ok=True)
                results[side].append(res)
                print(json.dumps({"round": r, "side": side, **res, "stored": d,
                                  "load": round(os.getloadavg()[0], 1)}), flush=True)
        same = digests["before"] == digests["after"]
        print(f"stored usage tables identical before/after: {same} "
              f"({hashlib.sha256(digests['after'].encode()).hexdigest()[:12]})")
        b = sorted(x["s"] for x in results["before"])
        a = sorted(x["s"] for x in results["after"])
        bc = sorted(x["cpu"] for x in results["before"])
        ac = sorted(x["cpu"] for x in results["after"])
        mb, ma = b[len(b) // 2], a[len(a) // 2]
        print(f"usagebot ingest end to end: median wall {mb:.2f} s -> {ma:.2f} s ({n / mb:,.0f} -> {n / ma:,.0f} "
              f"rows/s, {mb / ma:.2f}x); median CPU {bc[len(bc) // 2]:.2f} s -> {ac[len(ac) // 2]:.2f} s; "
              f"walls before {[round(x, 2) for x in b]}, after {[round(x, 2) for x in a]}")
        return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
