"""One evaluation of the anomaly kind against spike, drop and threshold, side by side on the same block.

    .venv/bin/python -m bench.anomaly_speed [--accounts 1000] [--bucket 3600] [--repeat 5]

Each rule evaluates the last bucket of a block of `accounts` hourly (or --bucket) series holding
the history the slowest of them needs (the anomaly rule's: 23 days of hourly buckets); the median
of `repeat` runs is printed with its ratio to the spike rule's, since the machine is shared.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np

from rules.detectors import detect, required_history
from rules.detectors.anomaly import AnomalyParams
from rules.detectors.spike_drop import DropParams, SpikeParams
from rules.detectors.threshold import ThresholdParams
from rules.model import WEEK, AccountFacts, Baseline, MetricBlock, Rule

END = 1_792_800_000 - 1_792_800_000 % WEEK


def rules(step: int) -> list[Rule]:
    weekly = Baseline(window=3 * WEEK, seasonality="weekly")
    return [Rule("spike", "spike", "m", step, SpikeParams(zscore=3.0), baseline=weekly),
            Rule("drop", "drop", "m", step, DropParams(), baseline=weekly),
            Rule("threshold", "threshold", "m", step, ThresholdParams(above=1000.0)),
            Rule("anomaly", "anomaly", "m", step, AnomalyParams())]


def measure(accounts: int, step: int, repeat: int) -> dict[str, float]:
    """Median seconds of one evaluation per rule."""
    rs = rules(step)
    n = max(required_history(r) for r in rs) // step
    rng = np.random.default_rng(1)
    values = rng.poisson(rng.gamma(2.0, 50.0, size=(accounts, 1)), size=(accounts, n)).astype(float)
    values[rng.random((accounts, n)) < 0.02] = np.nan
    block = MetricBlock("m", END - n * step, step, [f"a{i}" for i in range(accounts)], values)
    facts = [AccountFacts(a, a) for a in block.account_ids]
    out = {}
    for r in rs:
        detect(r, block, facts)
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            detect(r, block, facts)
            times.append(time.perf_counter() - began)
        out[r.id] = statistics.median(times)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--bucket", type=int, default=3600)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    got = measure(args.accounts, args.bucket, args.repeat)
    print(f"| rule | ms per evaluation ({args.accounts} accounts) | x spike |\n|---|---:|---:|")
    for name, seconds in got.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / got['spike']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
