"""The CSV parse before and after a change, side by side: each figure in a fresh process, the sides alternating.

    .venv/bin/python -m bench.bench_csv_parse --usage U.csv --accounts A.csv --baseline-ref 8562fff --rounds 2

Figures (wall and process CPU time; the CPU time is what a loaded machine moves least):
  parse   iter_usage_csv_columns over the file (modules imported before the timed part), and pyarrow.csv's
          own streaming read of the same file (all columns as strings) as the floor
  first   run_backtest with the shipped rules up to its first event (needs --accounts)
  ingest  `usagebot ingest` of both files into a fresh SQLite file (needs --accounts)
The usage file: the backtest bench's book (bench.bench_backtest --workdir W) or bench_daily's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PARSE = r'''
import sys, time, json
import storage.usage, pyarrow as pa, pyarrow.csv as pacsv, pyarrow.compute
from integrations.sources.csv_rows import iter_usage_csv_columns
t, c = time.perf_counter(), time.process_time()
if sys.argv[2] == "arrow":
    names = ["c0", "c1", "c2", "c3"]
    n = sum(b.num_rows for b in pacsv.open_csv(sys.argv[1], read_options=pacsv.ReadOptions(skip_rows=1, column_names=names),
            convert_options=pacsv.ConvertOptions(column_types={k: pa.string() for k in names})))
else:
    n = sum(len(ch.records) for ch in iter_usage_csv_columns(sys.argv[1]))
print(json.dumps({"rows": n, "s": time.perf_counter() - t, "cpu": time.process_time() - c, "pandas": "pandas" in sys.modules}))
'''
_FIRST = r'''
import sys, time, json
from bot.backtest.run import run_backtest
from rules.loader import load_rules
ruleset = load_rules([sys.argv[3]])
class First(Exception):
    pass
def on_event(ev):
    raise First
t, c = time.perf_counter(), time.process_time()
try:
    run_backtest(ruleset, sys.argv[1], sys.argv[2], on_event=on_event)
except First:
    pass
print(json.dumps({"s": time.perf_counter() - t, "cpu": time.process_time() - c, "pandas": "pandas" in sys.modules}))
'''
_INGEST = r'''
import sys, time, json, io
t, c = time.perf_counter(), time.process_time()
from bot.cli.main import main
out, err = io.StringIO(), io.StringIO()
code = main(["ingest", "--db", "sqlite:///" + sys.argv[3], "--accounts", sys.argv[2], "--usage", sys.argv[1]], out=out, err=err)
assert code == 0, err.getvalue()
print(json.dumps({"s": time.perf_counter() - t, "cpu": time.process_time() - c, "pandas": "pandas" in sys.modules}))
'''


def _run(code: str, tree: Path, *argv: str) -> dict:
    p = subprocess.run([sys.executable, "-c", code, *argv], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--usage", required=True)
    p.add_argument("--accounts", help="the accounts file (for the first-event and ingest figures)")
    p.add_argument("--baseline-ref", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--figures", default="parse,first,ingest")
    args = p.parse_args(argv)
    from bench.bench_backtest import RULES

    with tempfile.TemporaryDirectory(prefix="usagebot-bench-parse-") as tmp:
        base = Path(tmp) / "before"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_ref], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        trees = {"before": base, "after": ROOT}
        usage = str(Path(args.usage).resolve())
        accounts = str(Path(args.accounts).resolve()) if args.accounts else None
        for figure in args.figures.split(","):
            if figure != "parse" and accounts is None:
                continue
            sides = (["pyarrow read"] if figure == "parse" else []) + ["before", "after"]
            res: dict[str, list[dict]] = {s: [] for s in sides}
            for r in range(args.rounds):
                for side in sides:
                    tree = trees.get(side, ROOT)
                    if figure == "parse":
                        out = _run(_PARSE, tree, usage, "arrow" if side == "pyarrow read" else "usagebot")
                    elif figure == "first":
                        out = _run(_FIRST, tree, usage, accounts, str(RULES))
                    else:
                        db = Path(tmp) / f"{side}-{r}.db"
                        out = _run(_INGEST, tree, usage, accounts, str(db))
                        db.unlink()
                    res[side].append(out)
                    print(f"{figure} round {r} {side}: {out['s']:.2f} s wall, {out['cpu']:.2f} s CPU, "
                          f"pandas imported: {out['pandas']}", flush=True)
            means = {s: (sum(x["s"] for x in v) / len(v), sum(x["cpu"] for x in v) / len(v)) for s, v in res.items()}
            for s, (w, c) in means.items():
                rows = res[s][0].get("rows")
                rate = f" ({rows / w:,.0f} rows/s, {rows / c:,.0f} rows per CPU-second)" if rows else ""
                print(f"{figure} {s}: mean {w:.2f} s wall, {c:.2f} s CPU{rate}")
            print(f"{figure} before/after: wall {means['before'][0] / means['after'][0]:.2f}x, "
                  f"CPU {means['before'][1] / means['after'][1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
