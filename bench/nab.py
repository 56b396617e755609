"""The anomaly preset on the Numenta Anomaly Benchmark, through `usagebot backtest`, file by file.

    .venv/bin/python -m bench.nab [--data ../shared/nab-dev] [--preset rules/examples/anomaly.toml]
                                  [--sensitivity [--save-scores PATH]] [--jobs 2]

For every data file of the NAB directory (data/<category>/<name>.csv, labelled windows in
combined_windows.json) it writes the series as a usage CSV (one account, metric `value`), sets the
preset's `[defaults] bucket` to the file's sampling interval (the median gap between rows: 5m,
30m or 1h), runs `usagebot backtest --format json` on it, and counts every *notified* "fired" or
"renotified" alert as a detection at the row of the bucket it is about. bench.nab_score scores
the detections under NAB's three profiles. Usage cannot be negative, so a file with negative
values (art_daily_flatmiddle only) is shifted up by a round constant (NabFile.offset). Nothing here looks at the labels before scoring, and
one preset serves every file.

--sensitivity repeats the scoring with each main setting halved and doubled (score, adapt, learn)
and prints the three profiles of each. These runs call the detector's own `fit` on every
evaluation's trailing window directly (many windows per call, instead of one backtest per file:
the backtest of the whole set takes ~20 minutes on a shared 2-core machine) and apply the preset's
episode rules (fire at `score`, hold while >= `recovery` as scored with the episode open, resolve
after one bucket below, no `for`, no cooldown, a condition already true at the first evaluation held
by the first-run policy); the
preset's own row is computed both ways and printed, so the shortcut is checked on every run.
With --save-scores PATH it also writes, per file and bucket, the preset's two signed scores (the
bucket's own and the sustained shift's, None where undecided), the bucket's row and the labelled windows, so a rule
that only combines the two is scored offline with bench.nab_score without running the detector.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.nab_score import PROFILES, FileScore, normalised, score_file
from rules.detectors.anomaly import AnomalyParams, directional, fit, history_buckets
from rules.loader import load_rules_text

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "nab-dev"
DEFAULT_PRESET = ROOT / "rules" / "examples" / "anomaly.toml"
DETECTION_EVENTS = ("fired", "renotified")


def _epoch(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00").split(".")[0]).replace(tzinfo=UTC).timestamp())


@dataclass(frozen=True)
class NabFile:
    name: str  # "<category>/<name>.csv"
    times: np.ndarray  # epoch seconds per row
    values: np.ndarray
    windows: list[tuple[int, int]]  # labelled [first, last] rows

    @property
    def offset(self) -> float:
        """Added to every value of a file with negative values (usage cannot be negative): the
        next multiple of 10 at or above -minimum (art_daily_flatmiddle: +30); 0 for the others."""
        low = float(self.values.min())
        return 0.0 if low >= 0 else float(math.ceil(-low / 10) * 10)

    @property
    def step(self) -> int:
        """The sampling interval: the median gap between rows, in seconds."""
        return int(np.median(np.diff(self.times)))

    def readings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per bucket of `step` that has a row, in time order: its start, its first row, and the
        mean of its rows' values (offset included). NAB's series are readings of a gauge; where a
        file repeats timestamps (a clock set back: machine_temperature repeats 2014-01-07 02:00-02:55,
        ec2_request_latency holds 13 rows at 2014-03-09 03:00), the rows of one bucket are the same
        reading again, not more usage, so the bucket gets their mean: a sum would double the
        temperature for an hour, a false alarm of the harness, not of the detector."""
        step = self.step
        starts, first, inverse, counts = np.unique(self.times // step * step, return_index=True,
                                                   return_inverse=True, return_counts=True)
        means = np.bincount(inverse, weights=self.values + self.offset) / counts
        return starts, first, means


def read_file(data: Path, name: str, labels: Sequence[Sequence[str]]) -> NabFile:
    with open(data / "data" / name, newline="") as f:
        rows = list(csv.DictReader(f))
    times = np.array([_epoch(r["timestamp"]) for r in rows], dtype=np.int64)
    row_of = {int(t): i for i, t in enumerate(times)}
    windows = [(row_of[_epoch(a)], row_of[_epoch(b)]) for a, b in labels]
    return NabFile(name, times, np.array([float(r["value"]) for r in rows]), windows)


def duration_text(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def rules_text(preset: str, bucket: int, overrides: Mapping[str, str] | None = None) -> str:
    """The preset with its [defaults] bucket set to `bucket` and `overrides` (key -> TOML value)
    set in its (last) [rule.threshold] table."""
    text, n = re.subn(r'(?m)^bucket\s*=\s*"[^"]*"', f'bucket = "{duration_text(bucket)}"', preset, count=1)
    if n != 1:
        raise ValueError("the preset sets no bucket in [defaults]")
    for key, value in (overrides or {}).items():
        if not text.rstrip().split("[rule.threshold]")[-1]:
            raise ValueError("the preset has no [rule.threshold] table")
        text, n = re.subn(rf"(?m)^#?\s*{key}\s*=.*$", f"{key} = {value}", text, count=1)
        if n == 0:
            text = text.rstrip("\n") + f"\n{key} = {value}\n"
    return text


def detections(events: Sequence[Mapping], nab: NabFile) -> list[int]:
    """Rows of the notified alerts: the first row of the bucket each alert is about (NabFile.readings;
    a file's timestamps are not always increasing, so no binary search over its rows)."""
    starts, first, _ = nab.readings()
    row_of = dict(zip(starts.tolist(), first.tolist(), strict=True))
    return [row_of[b] for ev in events if ev["event"] in DETECTION_EVENTS and ev["notified"]
            if (b := _epoch(ev["window"][0])) in row_of]


def usagebot() -> str:
    here = Path(sys.executable).parent / "usagebot"
    return str(here) if here.exists() else "usagebot"


def backtest(nab: NabFile, rules: str, tmp: Path) -> list[dict]:
    """Run `usagebot backtest --format json` on one file; its events."""
    stem = nab.name.replace("/", "__")
    usage = tmp / f"{stem}.usage.csv"
    with open(usage, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "account", "metric", "value"])
        starts, _, means = nab.readings()
        for t, v in zip(starts, means, strict=True):
            w.writerow([datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "series", "value",
                        repr(float(v))])
    rule_file = tmp / f"{stem}.toml"
    rule_file.write_text(rules)
    out = subprocess.run([usagebot(), "backtest", "--rules", str(rule_file), "--usage", str(usage), "--format",
                          "json"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"usagebot backtest failed on {nab.name}: {out.stderr.strip()}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def run(files: Sequence[NabFile], preset: str, overrides: Mapping[str, str] | None = None,
        jobs: int = 2) -> dict[str, list[int]]:
    """Detections per file."""
    with tempfile.TemporaryDirectory(prefix="usagebot-nab-") as tmp, ThreadPoolExecutor(jobs) as pool:
        def one(nab: NabFile) -> tuple[str, list[int]]:
            return nab.name, detections(backtest(nab, rules_text(preset, nab.step, overrides), Path(tmp)), nab)
        return dict(pool.map(one, files))


def scores(files: Sequence[NabFile], found: Mapping[str, list[int]]) -> dict[str, tuple[float, list[FileScore]]]:
    out = {}
    for p in PROFILES:
        per_file = [score_file(len(f.times), f.windows, found[f.name], p) for f in files]
        out[p.name] = (normalised(per_file), per_file)
    return out


SENSITIVITY = {  # setting -> (its preset value, halved, doubled), as AnomalyParams values
    "score": (4.0, 2.0, 8.0),
    "adapt": (6, 3, 12),
    "learn": (None, 86_400, 345_600),  # the default is 2 days (at least 48 buckets): 1d and 4d
}


@dataclass(frozen=True)
class Scored:
    """One file's evaluations by the detector: per bucket, the directional score and whether decided."""

    score: np.ndarray
    decided: np.ndarray
    row_of: dict[int, int]  # bucket -> row of the file
    point: np.ndarray | None = None  # the bucket's own score (signed), for --save-scores
    sustained: np.ndarray | None = None  # the sustained-shift score (signed)
    # (buckets, buckets since the open episode's first) -> their directional scores with that episode open
    held: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None


def direct_scores(nab: NabFile, params: AnomalyParams, chunk: int = 400) -> Scored:
    """rules.detectors.anomaly.fit on each evaluation's trailing window (many windows per call)."""
    step = nab.step
    starts, first, means = nab.readings()
    cols = (starts - starts[0]) // step
    y = np.full(int(cols[-1]) + 1, np.nan)
    y[cols] = means
    h = history_buckets(params, step)
    padded = np.concatenate([np.full(h - 1, np.nan), y])
    windows = np.lib.stride_tricks.sliding_window_view(padded, h)  # row j: the window ending at bucket j
    score, point, sustained = (np.full(len(y), np.nan) for _ in range(3))
    decided = np.zeros(len(y), dtype=bool)
    for lo in range(0, len(y), chunk):
        f = fit(np.ascontiguousarray(windows[lo:lo + chunk]), step, params)
        score[lo:lo + chunk] = directional(params, f.score)
        point[lo:lo + chunk], sustained[lo:lo + chunk] = f.point, f.sustained
        decided[lo:lo + chunk] = f.decided

    def held(buckets: np.ndarray, since: np.ndarray) -> np.ndarray:
        return directional(params, fit(np.ascontiguousarray(windows[buckets]), step, params, since).score)
    return Scored(score, decided, {int(c): int(i) for c, i in zip(cols, first, strict=True)}, point, sustained,
                  held)


def scores_json(files: Sequence[NabFile], series: Mapping[str, Scored]) -> dict[str, dict[str, object]]:
    """Per file, per bucket that has a row: that row (`row`, the one the direct episodes report) and
    both signals' signed scores (None where undecided), with the file's row count and labelled
    windows, so a rule combining them (thresholds, corrections, persistence) is scored offline in
    seconds with bench.nab_score instead of a detector run per variant."""
    out: dict[str, dict[str, object]] = {}
    for f in files:
        sc = series[f.name]
        buckets = sorted(sc.row_of)

        def col(a: np.ndarray | None, buckets: list[int] = buckets, sc: Scored = sc) -> list[float | None]:
            return [float(a[j]) if a is not None and sc.decided[j] and np.isfinite(a[j]) else None for j in buckets]
        out[f.name] = {"rows": len(f.times), "windows": f.windows, "row": [sc.row_of[j] for j in buckets],
                       "bucket": col(sc.point), "shift": col(sc.sustained)}
    return out


def episode_starts(scored: Scored, threshold: float, hold: float) -> list[int]:
    """Rows of the notified alerts under the preset's episode rules (see the module docstring)."""
    found, first = [], True
    buckets = np.flatnonzero(scored.decided)
    k = 0
    while k < len(buckets):
        if scored.score[buckets[k]] >= threshold:
            if not first:  # first-run policy: a condition true at the first evaluation is not notified
                found.append(int(buckets[k]))
            k = _ends(scored, buckets, k, hold)  # the bucket that ends it cannot fire again
        first = False
        k += 1
    return [scored.row_of[j] for j in found if j in scored.row_of]


def _ends(scored: Scored, buckets: np.ndarray, k: int, hold: float) -> int:
    """Index (into `buckets`) of the first bucket after buckets[k] at which the episode opened there no
    longer holds (score < hold), len(buckets) if it never ends. The scores are those of the detector with
    that episode open (Scored.held: its buckets are not learnt from), computed in growing batches."""
    pos, batch = k + 1, 32
    while pos < len(buckets):
        js = buckets[pos:pos + batch]
        s = scored.held(js, js - buckets[k]) if scored.held is not None else scored.score[js]
        below = np.flatnonzero(~(s >= hold))
        if below.size:
            return pos + int(below[0])
        pos, batch = pos + batch, batch * 2
    return len(buckets)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--preset", type=Path, default=DEFAULT_PRESET)
    ap.add_argument("--sensitivity", action="store_true", help="also run each main setting halved and doubled")
    ap.add_argument("--save", type=Path, help="write the detections (rows per file) here as JSON")
    ap.add_argument("--no-backtest", action="store_true", help="with --sensitivity: only the direct runs")
    ap.add_argument("--save-direct", type=Path, help="write the direct run's detections of the preset here")
    ap.add_argument("--save-scores", type=Path, help="with --sensitivity: write the preset's per-row bucket and"
                    " shift scores (direct computation) here as JSON")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    labels = json.loads((args.data / "combined_windows.json").read_text())
    files = [read_file(args.data, name, labels[name]) for name in sorted(labels)]
    preset = args.preset.read_text()
    found = {} if args.no_backtest else run(files, preset, jobs=args.jobs)
    if args.save:
        args.save.write_text(json.dumps(found))
    if found:
        result = scores(files, found)
        print("| profile | score |\n|---|---:|")
        for name, (score, _) in result.items():
            print(f"| {name} | {score:.1f} |")
        print("\n| file | rows | bucket | windows | detected | false positives | standard raw |\n"
              "|---|---:|---|---:|---:|---:|---:|")
        for f, s in zip(files, result["standard"][1], strict=True):
            print(f"| {f.name} | {len(f.times)} | {duration_text(f.step)} | {s.windows} | {s.detected} |"
                  f" {s.false_positives} | {s.raw:.2f} |")
    if args.sensitivity:
        base = load_rules_text(rules_text(preset, 300), "preset").rules[0].params

        def row(label: str, value: object, params: AnomalyParams, series: dict[str, Scored]) -> dict[str, list[int]]:
            got = {n: episode_starts(sc, params.threshold, params.hold) for n, sc in series.items()}
            print(f"| {label} | {value} | " + " | ".join(f"{x[0]:.1f}" for x in scores(files, got).values()) + " |",
                  flush=True)
            return got

        series = {f.name: direct_scores(f, base) for f in files}
        print("\n| setting | value | standard | reward_low_FP_rate | reward_low_FN_rate |\n|---|---|---:|---:|---:|")
        direct = row("(preset)", "", base, series)
        if args.save_scores:
            args.save_scores.write_text(json.dumps(scores_json(files, series)))
        if args.save_direct:
            args.save_direct.write_text(json.dumps(direct))
        same = sum(direct[f.name] == found.get(f.name) for f in files)
        for key, (_, low, high) in SENSITIVITY.items():
            for label, value in (("halved", low), ("doubled", high)):
                params = replace(base, **{key: value})
                if key != "score":  # the score threshold does not change what is learnt
                    series = {f.name: direct_scores(f, params) for f in files}
                row(f"{key} {label}", value, params, series)
        if found:
            print(f"\nthe direct computation gives the backtest's detections on {same} of {len(files)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
