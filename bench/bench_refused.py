"""Refused buckets (integrations.sources.refused): a push request and a polled event feed whose
buckets all overflow on their stored totals, before and after a change, side by side: each figure in
a fresh process (modules imported before the timed part), the sides alternating.

    .venv/bin/python -m bench.bench_refused --buckets 300 --baseline-ref main --rounds 3

Per side and round, a fresh SQLite file:
  push  a request of `--buckets` events of 1e308, one per account, stored; then the timed request:
        one more 1e308 event per account (every bucket overflows) and one good event
  poll  the same through poll_source of an event feed (one batch)
`before` is the baseline ref extracted by `git archive` into a temporary folder and run with the
same interpreter. The figure is the wall time of the timed request / poll and its store_batch calls
(one transaction each).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench.sides import ROOT, baseline_tree, run_json

_RUN = r'''
import json, sys, time
from datetime import UTC, datetime
import bot.service.polling as polling
import integrations.sources.push as push
from integrations.sources.base import Batch, UsageEvent
from integrations.sources.push import PushConfig, PushIngest
from rules.config import Secret
from storage.db import make_engine, migrate
url, n = sys.argv[1], int(sys.argv[2])
T0 = 1_793_491_200
NOW = T0 + 3600
engine = make_engine(url)
migrate(engine)
calls = {"n": 0}
for mod in (push, polling):
    real = mod.store_batch
    def counted(*a, _real=real, **k):
        calls["n"] += 1
        return _real(*a, **k)
    mod.store_batch = counted
def ev(eid, account, value):
    return {"specversion": "1.0", "id": eid, "source": "app", "type": "api_calls", "subject": account,
            "time": datetime.fromtimestamp(T0 + 30, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "data": {"value": value}}
p = PushIngest(engine, PushConfig(secret=Secret("s")), clock=lambda: NOW)
h = {"Authorization": "Bearer s", "Content-Type": "application/json"}
assert p.handle(h, json.dumps([ev(f"a{i}", f"acct{i}", 1e308) for i in range(n)]).encode())[0] == 200
out = {}
calls["n"] = 0
t = time.perf_counter()
status, answer = p.handle(h, json.dumps([ev(f"b{i}", f"acct{i}", 1e308) for i in range(n)]
                                        + [ev("g", "globex", 1)]).encode())
out["push"] = {"s": time.perf_counter() - t, "stores": calls["n"]}
assert status == 200 and answer["accepted"] == 1 and len(answer["refused"]) == n, answer

class Feed:
    id = "feed"
    def __init__(self, events):
        self.events = events
    def poll(self, ctx):
        yield Batch("c", T0 + 30, events=self.events, label="feed")
    def close(self):
        pass
first = [UsageEvent(f"acct{i}", "calls", T0 + 30, 1e308, f"a{i}") for i in range(n)]
assert polling.poll_source(engine, Feed(first), NOW).ok
again = [UsageEvent(f"acct{i}", "calls", T0 + 30, 1e308, f"b{i}") for i in range(n)]
calls["n"] = 0
t = time.perf_counter()
report = polling.poll_source(engine, Feed(again + [UsageEvent("globex", "calls", T0 + 30, 1, "g")]), NOW + 60)
out["poll"] = {"s": time.perf_counter() - t, "stores": calls["n"]}
assert report.ok and report.events_new == 1, report
print(json.dumps(out))
'''


def run(code_root: Path, url: str, buckets: int) -> dict:
    return run_json(code_root, _RUN, url, str(buckets))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--buckets", type=int, default=300)
    ap.add_argument("--baseline-ref", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        before = baseline_tree(args.baseline_ref, work)
        print(f"{args.buckets} overflowing buckets; load {os.getloadavg()[0]:.1f}")
        results: dict[str, list[dict]] = {"before": [], "after": []}
        for r in range(args.rounds):
            sides = (("before", before), ("after", ROOT))
            for side, root in sides if r % 2 == 0 else sides[::-1]:
                db = work / f"{side}-{r}.db"
                res = run(root, f"sqlite:///{db}", args.buckets)
                os.unlink(db)
                results[side].append(res)
                print(json.dumps({"round": r, "side": side, **res, "load": round(os.getloadavg()[0], 1)}), flush=True)
        for step in ("push", "poll"):
            b = sorted(x[step]["s"] for x in results["before"])
            a = sorted(x[step]["s"] for x in results["after"])
            mb, ma = b[len(b) // 2], a[len(a) // 2]
            print(f"{step}: median wall {mb:.2f} s -> {ma:.3f} s ({mb / ma:.0f}x); store transactions "
                  f"{results['before'][0][step]['stores']} -> {results['after'][0][step]['stores']}")


if __name__ == "__main__":
    main()
