"""One evaluation of the anomaly kind against spike, drop and threshold, side by side on the same block.

    .venv/bin/python -m bench.anomaly_speed [--accounts 1000] [--bucket 3600] [--repeat 5]
                                            [--baseline OLD_ANOMALY_PY] [--missing 0.02]

Each rule evaluates the last bucket of a block of `accounts` hourly (or --bucket) series holding
the history the slowest of them needs (the anomaly rule's: 23 days of hourly buckets), Poisson
counts with `--missing` of the buckets not observed (default 2%; 0: every bucket observed); the median
of `repeat` runs is printed with its ratio to the spike rule's, since the machine is shared. The
rules take turns (one evaluation each per round), so a burst of load on the shared machine falls on
all of them alike.

--baseline FILE adds a row for another version of rules/detectors/anomaly.py (e.g.
`git show main:rules/detectors/anomaly.py > /tmp/anomaly_main.py`), timed in the same rounds: the
before/after comparison side by side in one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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


def baseline_detector(path: Path) -> Callable[[MetricBlock, list[AccountFacts]], object]:
    """The detect function of another version of the anomaly module, with its default params."""
    spec = importlib.util.spec_from_file_location("anomaly_baseline", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)

    def run(block: MetricBlock, facts: list[AccountFacts]) -> object:
        rule = Rule("anomaly", "anomaly", "m", block.step, module.AnomalyParams())
        return module.detect_anomaly(rule, block, facts)
    return run


def measure(accounts: int, step: int, repeat: int, baseline: Path | None = None,
            missing: float = 0.02) -> dict[str, float]:
    """Median seconds of one evaluation per rule (and per the baseline anomaly module)."""
    rs = rules(step)
    n = max(required_history(r) for r in rs) // step
    rng = np.random.default_rng(1)
    values = rng.poisson(rng.gamma(2.0, 50.0, size=(accounts, 1)), size=(accounts, n)).astype(float)
    values[rng.random((accounts, n)) < missing] = np.nan
    block = MetricBlock("m", END - n * step, step, [f"a{i}" for i in range(accounts)], values)
    facts = [AccountFacts(a, a) for a in block.account_ids]
    runs: dict[str, Callable[[], object]] = {r.id: (lambda r=r: detect(r, block, facts)) for r in rs}
    if baseline is not None:
        old = baseline_detector(baseline)
        runs["anomaly (baseline)"] = lambda: old(block, facts)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for f in runs.values():
        f()  # warm
    for _ in range(repeat):
        for name, f in runs.items():
            began = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--bucket", type=int, default=3600)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="another version of rules/detectors/anomaly.py to time beside")
    ap.add_argument("--missing", type=float, default=0.02, help="share of buckets not observed (default 0.02)")
    args = ap.parse_args(argv)
    got = measure(args.accounts, args.bucket, args.repeat, args.baseline, args.missing)
    print(f"| rule | ms per evaluation ({args.accounts} accounts) | x spike |\n|---|---:|---:|")
    for name, seconds in got.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / got['spike']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
