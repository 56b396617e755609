"""Randomized equivalence: the vectorised detectors against the simple per-series reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rules.detectors import detect
from rules.detectors.inactivity import InactivityParams
from rules.detectors.quota import QuotaParams
from rules.detectors.spike_drop import DropParams, SpikeParams
from rules.model import DAY, WEEK, AccountFacts, Baseline, Guards, MetricBlock, Rule
from tests.rules import reference

START = 1_788_220_800  # 2026-09-01T00:00:00Z (a Tuesday)


def random_block(rng: np.random.Generator, step: int, rows: int, cols: int, start: int = START) -> MetricBlock:
    """Integer-valued usage (exact float arithmetic) with zeros, gaps and level shifts."""
    level = rng.integers(0, 300, size=(rows, 1)).astype(float)
    vals = rng.poisson(np.maximum(level, 0.5), size=(rows, cols)).astype(float)
    shift = rng.random((rows, cols)) < 0.05
    vals[shift] *= rng.choice([0.0, 0.2, 4.0, 10.0], size=int(shift.sum()))
    vals = np.round(vals)
    vals[rng.random((rows, cols)) < rng.choice([0.0, 0.05, 0.3])] = np.nan
    zero_rows = rng.random(rows) < 0.15
    vals[zero_rows] = 0.0
    return MetricBlock("m", start, step, [f"a{i}" for i in range(rows)], vals)


def as_series(row: np.ndarray) -> list[float | None]:
    return [None if math.isnan(x) else float(x) for x in row]


def compare(rule: Rule, block: MetricBlock, accounts: list[AccountFacts], ref_fn) -> None:
    got = detect(rule, block, accounts)
    by_acct: dict[str, list] = {}
    for f in got.findings:
        by_acct.setdefault(f.account_id, []).append((f.discriminator, f.value, f.baseline, f.threshold))
    for i, acct in enumerate(block.account_ids):
        ref = ref_fn(rule, as_series(block.values[i]), i)
        assert bool(got.decided[i]) == ref.decided, (rule, acct, block.values[i].tolist())
        mine = sorted(by_acct.get(acct, []))
        theirs = sorted(ref.fired)
        assert len(mine) == len(theirs), (rule, acct, mine, theirs, block.values[i].tolist())
        for a, b in zip(mine, theirs, strict=True):
            assert a[0] == b[0]
            for x, y in zip(a[1:], b[1:], strict=True):
                assert (x is None and y is None) or x == pytest.approx(y, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("seed", range(80))
def test_spike_drop_equivalence(seed):
    rng = np.random.default_rng(seed)
    step = int(rng.choice([3600, 6 * 3600, DAY]))
    cols = int(rng.integers(0, 80 if step == DAY else 400))
    block = random_block(rng, step, int(rng.integers(1, 8)), cols)
    weekly = bool(rng.random() < 0.5)
    window = int(rng.integers(1, 5)) * WEEK if weekly else int(rng.integers(1, 30)) * step
    kind = str(rng.choice(["spike", "drop"]))
    zscore = None if rng.random() < 0.5 else float(rng.choice([1.0, 2.5, 4.0]))
    smooth = int(rng.integers(1, 4))
    params = (SpikeParams(ratio=float(rng.choice([1.5, 2.0, 3.0])), zscore=zscore, smooth=smooth)
              if kind == "spike" else DropParams(ratio=float(rng.choice([0.3, 0.5, 0.8])), zscore=zscore,
                                                 smooth=smooth))
    rule = Rule(id="r", kind=kind, metric="m", bucket=step, params=params,
                baseline=Baseline(window=window, method=str(rng.choice(["median", "mean"])),
                                  seasonality="weekly" if weekly else "none",
                                  min_points=int(rng.integers(1, 4))),
                guards=Guards(min_baseline=float(rng.choice([0, 5, 50])), min_value=float(rng.choice([0, 20])),
                              min_delta=float(rng.choice([0, 10]))))
    accounts = [AccountFacts(a, a) for a in block.account_ids]
    for t in sorted({cols, max(0, cols - 1), cols // 2}):  # several evaluation points of one block
        # a jump (or fall) in the buckets just before some evaluation points, for some rows
        jump = rng.random(block.values.shape[0]) < 0.6
        lo = max(0, t - int(rng.integers(1, 4)))
        block.values[jump, lo:t] = np.round(block.values[jump, lo:t] * float(rng.choice([0.0, 0.2, 3.0, 6.0])))
        compare(rule, block.truncated(t), accounts, lambda r, s, i: reference.spike_drop(r, s, step))


@pytest.mark.parametrize("seed", range(30))
def test_inactivity_equivalence(seed):
    rng = np.random.default_rng(1000 + seed)
    step = int(rng.choice([3600, DAY]))
    cols = int(rng.integers(0, 60 if step == DAY else 300))
    block = random_block(rng, step, int(rng.integers(1, 8)), cols)
    # make some rows go quiet at the end
    quiet = rng.random(block.values.shape[0]) < 0.5
    tail = int(rng.integers(1, 20))
    block.values[quiet, -tail:] = np.where(np.isnan(block.values[quiet, -tail:]), np.nan, 0.0)
    rule = Rule(id="i", kind="inactivity", metric="m", bucket=step,
                params=InactivityParams(duration=int(rng.integers(1, 10)) * step,
                                        max_missing=float(rng.choice([0.0, 0.2, 1.0])),
                                        prior_window=int(rng.integers(0, 30)) * step,
                                        min_prior_usage=float(rng.choice([0, 1, 100]))))
    accounts = [AccountFacts(a, a) for a in block.account_ids]
    compare(rule, block, accounts, lambda r, s, i: reference.inactivity(r, s, step))


@pytest.mark.parametrize("seed", range(30))
def test_quota_threshold_equivalence(seed):
    rng = np.random.default_rng(2000 + seed)
    step = int(rng.choice([3600, DAY]))
    cols = int(rng.integers(0, 70 if step == DAY else 24 * 45))
    rows = int(rng.integers(1, 8))
    block = random_block(rng, step, rows, cols, start=START - int(rng.integers(0, 40)) * DAY)
    zones = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo"]
    accounts = [
        AccountFacts(a, a, quotas={} if rng.random() < 0.15 else {"m": float(rng.integers(50, 20_000))},
                     billing_day=int(rng.choice([1, 1, 15, 28])), timezone=str(rng.choice(zones)))
        for a in block.account_ids
    ]
    fractions = tuple(sorted({float(x) for x in rng.choice([0.5, 0.8, 1.0, 1.2], size=2)}))
    rule = Rule(id="q", kind="quota", metric="m", bucket=step, params=QuotaParams(fractions=fractions))
    compare(rule, block, accounts,
            lambda r, s, i: reference.quota_threshold(r, s, block.start, step, accounts[i]))
