"""The http_json source's item loop (fields mapped and validated per item), before and after a change,
side by side: each figure in a fresh process, the sides alternating round by round.

    .venv/bin/python -m bench.bench_http_items --baseline-ref main --items 200000 --rounds 5

Per side and round: one poll of one page of `--items` good items (500 accounts, a day of minutes,
ISO timestamps), the page handed to the poll without HTTP (the network is not what is measured);
the best of 3 polls in the process. `before` is the baseline ref extracted by `git archive` into a
temporary folder and run with the same interpreter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_793_491_200  # 2026-11-01T00:00:00Z
CONFIG = """
[[sources]]
id = "b"
type = "http_json"
url = "http://127.0.0.1:9/usage"
records = "data"
[sources.fields]
account = "customer.id"
metric = "meter"
value = "qty"
timestamp = "start"
"""


def child(n: int) -> float:
    """Seconds of the best of 3 polls of one page of `n` items (run with the side's tree first on sys.path)."""
    from datetime import UTC, datetime

    from integrations.sources.base import PollContext, parse_source_config
    from integrations.sources.http_json import HttpJsonSource
    from rules.config import document_from_text

    cfg = parse_source_config(document_from_text(CONFIG, "bench.toml").sections("sources")[0])
    items = [{"customer": {"id": f"a{i % 500}"}, "meter": "api_calls", "qty": i % 97,
              "start": datetime.fromtimestamp(T0 + (i % 1440) * 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
             for i in range(n)]
    src = HttpJsonSource(cfg)  # type: ignore[arg-type]
    src.pages = lambda ctx, span=None: iter([(1, {"data": items}, items)])  # type: ignore[method-assign]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        [batch] = list(src.poll(PollContext("b", T0 + 86_400)))
        best = min(best, time.perf_counter() - t)
    assert len(batch.totals) == n
    return best


def run(root: Path, n: int) -> float:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", f"from bench.bench_http_items import child; print(child({n}))"],
                         cwd=root, env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline-ref", default="main")
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        archive = subprocess.run(["git", "archive", args.baseline_ref], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        (base / "bench" / "bench_http_items.py").write_bytes((ROOT / "bench" / "bench_http_items.py").read_bytes())
        before, after = [], []
        for r in range(args.rounds):
            before.append(run(base, args.items))
            after.append(run(ROOT, args.items))
            print(f"round {r + 1}: before {before[-1]:.3f}s  after {after[-1]:.3f}s  "
                  f"ratio {after[-1] / before[-1]:.3f}", flush=True)
    mb, ma = statistics.median(before), statistics.median(after)
    print(f"| items | before (median s) | after (median s) | after / before |\n|---|---|---|---|\n"
          f"| {args.items:,} | {mb:.3f} | {ma:.3f} | {ma / mb:.3f} |")


if __name__ == "__main__":
    main()
