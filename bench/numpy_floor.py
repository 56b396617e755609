"""Detection floor: the shipped rules' conditions in plain numpy on the same in-memory blocks.

    .venv/bin/python -m bench.numpy_floor                       # 10,000 accounts x 120 days x 4 metrics
    .venv/bin/python -m bench.numpy_floor --accounts 2000 --days 90

The engine's detection (rules.engine.evaluate: segments, containment, the detectors; findings columnar,
rules.model.FindingRows, as the replay uses them; also timed with every Finding object built, as the
scheduler's evaluate().findings does) against the least numpy that computes the same conditions for every account at the last bucket close,
on the same dense accounts x days blocks in memory (no database, no lifecycle): the issue-15 target is
"detection <= 2x numpy". The floor gets the account facts it reads (segment masks, quota arrays, billing
groups) as arrays prepared beforehand (not timed); the engine derives them from the facts in its time. Both are timed best of --repeat, alternating, in one process; the findings
(rule, account, discriminator) are checked identical, so the floor is not a shortcut.

Scope: the shipped rules (rules/examples/default.toml) of kind spike, drop, inactivity and quota
(threshold and forecast), without open episodes (a cold evaluation). The two expansion rules are left
out of both sides (their floor is not written).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules" / "examples" / "default.toml"
METRICS4 = ("api_calls", "events", "exports", "reports")
KINDS = ("spike", "drop", "inactivity", "quota")
WEEK = 7 * 86_400
Key = tuple[str, str, str]  # (rule id, account id, discriminator)


def _center(points: np.ndarray, method: str) -> np.ndarray:
    """Row-wise mean / median / upper quartile of the observed points (NaN when none): one sort
    (NaN sorts last) and an index, the cheapest numpy way (np.nanmedian / nanquantile take ~4x)."""
    count = np.count_nonzero(~np.isnan(points), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "mean":
            return np.where(count > 0, np.nansum(points, axis=1) / count, np.nan)
        ordered = np.sort(points, axis=1)
        rows = np.arange(len(points))
        last = np.maximum(count - 1, 0)
        if method == "median":
            out = (ordered[rows, last // 2] + ordered[rows, np.minimum(count // 2, points.shape[1] - 1)]) / 2.0
        else:
            pos = last * 0.75
            lo = np.floor(pos).astype(np.intp)
            frac = pos - lo
            out = ordered[rows, lo] * (1.0 - frac) + ordered[rows, np.minimum(lo + 1, last)] * frac
    return np.where(count > 0, out, np.nan)


def spike_drop(rule: Any, values: np.ndarray, step: int) -> np.ndarray:
    """Rows with a new spike/drop at the block's end (smooth = 1 and 1d buckets, as shipped)."""
    n = values.shape[1]
    v = values[:, -1]
    if rule.baseline.seasonality == "weekly":
        per_week = WEEK // step
        cols = [n - 1 - k * per_week for k in range(1, rule.baseline.window // WEEK + 1)]
        points = np.stack([values[:, c] if c >= 0 else np.full(len(v), np.nan) for c in cols], axis=1)
    else:
        width = rule.baseline.window // step
        points = values[:, max(0, n - 1 - width): n - 1]
    b = _center(points, rule.baseline.method)
    count = np.count_nonzero(~np.isnan(points), axis=1)
    g, p = rule.guards, rule.params
    with np.errstate(invalid="ignore"):
        fire = ~np.isnan(v) & ~np.isnan(b) & (count >= max(1, rule.baseline.min_points))
        fire &= (b >= g.min_baseline) & (np.abs(v - b) >= g.min_delta)
        if rule.kind == "spike":
            fire &= (v >= g.min_value) & (v >= p.ratio * b) & (v > b)
        else:
            fire &= (v <= p.ratio * b) & (v < b)
        if p.zscore is not None:
            rows = np.flatnonzero(fire)
            pts, bb, vv = points[rows], b[rows], v[rows]
            med = _center(pts, "median")
            mad = _center(np.abs(pts - med[:, None]), "median")
            scale = np.fmax(np.fmax(1.4826 * mad, 0.05 * np.abs(bb)), 1e-9)
            z = (vv - bb) / scale if rule.kind == "spike" else (bb - vv) / scale
            fire[rows] = z >= p.zscore
    return fire


def inactivity(rule: Any, values: np.ndarray, step: int) -> np.ndarray:
    p = rule.params
    n = values.shape[1]
    width = max(1, p.duration // step)
    window = values[:, n - width:]
    missing = np.isnan(window)
    n_missing = missing.sum(axis=1)
    prior = values[:, max(0, n - width - p.prior_window // step): n - width]
    return ((n_missing / width <= p.max_missing) & (n_missing < width) & ((window == 0) | missing).all(axis=1)
            & (np.nansum(prior, axis=1) >= p.min_prior_usage))


def quota(rule: Any, values: np.ndarray, start: int, step: int, groups: Sequence[tuple[int, str, np.ndarray]],
          q: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """(rows, discriminator) of the new quota findings at the block's end, per billing group."""
    from rules.periods import billing_period

    p = rule.params
    n = values.shape[1]
    at = start + n * step
    out: list[tuple[np.ndarray, str]] = []
    for day, tz, rows in groups:
        rows = rows[q[rows] > 0]
        period = billing_period(at - 1, day, tz)
        if not rows.size or start > period.start:
            continue
        lo = min(n, max(0, -((start - period.start) // step)))
        part = values[rows, lo:]
        used = np.nansum(part, axis=1)
        observed = (~np.isnan(part)).sum(axis=1)
        ok = (observed > 0) | (part.shape[1] == 0)
        if p.mode == "threshold":
            out += [(rows[ok & (used >= f * q[rows])], f"{period.label}:{f:g}") for f in sorted(p.fractions)]
            continue
        current = ~np.isnan(values[rows, -1])
        if at - period.start < p.min_elapsed:
            continue
        width = max(1, p.forecast_window // step)
        recent = values[rows, max(0, n - width):]
        r_obs = (~np.isnan(recent)).sum(axis=1)
        has_rate = ok & current & (r_obs > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(has_rate, np.nansum(recent, axis=1) / (r_obs * step), 0.0)
        projected = used + rate * (period.end - at)
        target = p.fraction * q[rows]
        fire = has_rate & (observed * step >= p.min_observed) & (used < target) & (target <= projected)
        out.append((rows[fire], f"{period.label}:forecast{p.fraction:g}"))
    return out


def floor_findings(rules: Sequence[Any], blocks: Mapping[tuple[str, int], Any], facts: Mapping[tuple[str, int], Any]
                   ) -> set[Key]:
    """Every rule's new findings at the blocks' end, in plain numpy."""
    found: set[Key] = set()
    for rule in rules:
        block = blocks[(rule.metric, rule.bucket)]
        values, ids = block.values, block.account_ids
        f = facts[(rule.metric, rule.bucket)]
        keep = f["segment"][rule.id]
        if rule.kind in ("spike", "drop"):
            hits = [(np.flatnonzero(spike_drop(rule, values, block.step) & keep), "")]
        elif rule.kind == "inactivity":
            hits = [(np.flatnonzero(inactivity(rule, values, block.step) & keep), "")]
        else:
            hits = [(rows[keep[rows]], d) for rows, d in quota(rule, values, block.start, block.step, f["groups"],
                                                                 f["quota"][rule.metric])]
        found.update((rule.id, ids[i], d) for rows, d in hits for i in rows)
    return found


def _facts(rules: Sequence[Any], blocks: Mapping[tuple[str, int], Any], accounts: Mapping[str, Any]) -> dict:
    """What the floor reads of the account facts, prepared once (as the engine's Reuse does)."""
    out: dict = {}
    for key, block in blocks.items():
        rows = [accounts[a] for a in block.account_ids]
        groups: dict[tuple[int, str], list[int]] = {}
        for i, a in enumerate(rows):
            groups.setdefault((a.billing_day, a.timezone), []).append(i)
        out[key] = {
            "segment": {r.id: np.array([r.segment.matches(a) for a in rows]) for r in rules},
            "groups": [(d, tz, np.asarray(ix)) for (d, tz), ix in groups.items()],
            "quota": {m: np.array([float(a.quotas.get(m) or np.nan) for a in rows]) for m in {r.metric for r in rules}},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from integrations.sources.demo import generate_book
    from rules.engine import evaluate, history_needed
    from rules.loader import load_rules

    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rules = [r for r in load_rules([RULES]).rules if r.kind in KINDS]
    book = generate_book(n_accounts=args.accounts, days=args.days, seed=args.seed, metrics=METRICS4)
    blocks = {key: book.block(key[0]) for key in history_needed(rules)}
    accounts = {a.id: a for a in book.accounts}
    end = book.end
    engine_s, built_s, floor_s = [], [], []
    facts = _facts(rules, blocks, accounts)  # the facts as arrays: inputs of the floor, not timed
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = evaluate(rules, blocks, accounts, end, only_due=False)
        engine_s.append(time.perf_counter() - t0)
        result.findings  # noqa: B018  (every Finding object built: what the scheduler reads)
        built_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        floor = floor_findings(rules, blocks, facts)
        floor_s.append(time.perf_counter() - t0)
    got = {(f.rule_id, f.account_id, f.discriminator) for f in result.findings}
    same = got == floor
    print(f"Detection floor: {args.accounts:,} accounts x {args.days} days x 4 metrics, {len(rules)} shipped rules"
          f" ({', '.join(KINDS)}), best of {args.repeat}")
    print(f"  engine detection (evaluate, columnar findings) {min(engine_s):8.3f} s  {len(got):,} findings")
    print(f"  ... and every Finding object built             {min(built_s):8.3f} s")
    print(f"  numpy floor (same conditions, same blocks)     {min(floor_s):8.3f} s  {len(floor):,} findings")
    print(f"  ratio engine / numpy: {min(engine_s) / min(floor_s):.2f}x (with Finding objects"
          f" {min(built_s) / min(floor_s):.2f}x); findings {'identical' if same else 'DIFFERENT'}")
    if not same:
        print(f"  only engine: {sorted(got - floor)[:5]}; only floor: {sorted(floor - got)[:5]}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
