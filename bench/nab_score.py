"""The Numenta Anomaly Benchmark's scoring method, written from its published description.

Lavin & Ahmad, "Evaluating Real-time Anomaly Detection Algorithms - the Numenta Anomaly Benchmark"
(2015), and the NAB README: a data file is a series of rows; labelled anomaly *windows* are row
ranges [first, last] (inclusive). A detector says yes or no at every row; the detections are
scored as follows.

- **Probation**: the first min(floor(0.15 x rows), 0.15 x 5000) rows of a file are a learning
  period: detections in it count for nothing, and a window with no row after it is not scored.
- **Inside a window** a detection at row i scores the scaled sigmoid of its relative position
  p = -(last - i + 1) / width (width = last - first + 1, so p runs from -1 at the window's first
  row to just under 0 at its last), sigma(p) = 2 / (1 + e^(5p)) - 1, divided by sigma(-1) so the
  earliest detection is worth exactly tp_weight. Only a window's best (earliest) detection counts.
- **A window without a detection** costs fn_weight.
- **Outside windows** every detection costs fp_weight x sigma(p): p = 3 (sigma = -1: the full
  weight) before the first window, else p = |i - last of the previous window| / (width of that
  window - 1), so a detection just after a window costs little and one far from it (p >= 3) the
  full weight.
- A file's raw score is the sum of its windows' scores and its false-positive costs; the corpus
  score is normalised as 100 x (raw - null) / (perfect - null), summed over the files, where the
  null detector never detects (raw = -fn_weight x scored windows) and the perfect one detects
  every window at its first row (tp_weight x windows).

Profiles (NAB's config/profiles.json): standard (tp 1, fp 0.11, fn 1), reward_low_FP_rate
(fp 0.22), reward_low_FN_rate (fn 2.0). NAB also picks, per profile, the detector's threshold on
an anomaly score that maximises the corpus score; usagebot's rules say yes or no themselves, so
here a detection is an alert and one threshold (the preset's) serves every profile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PROBATION_SHARE = 0.15
PROBATION_CAP_ROWS = 5000  # the probation is at most 0.15 x 5000 = 750 rows
PAST_WINDOW_FULL_COST = 3.0  # a relative position >= 3 past a window costs the full fp weight


@dataclass(frozen=True)
class Profile:
    name: str
    tp: float
    fp: float
    fn: float


PROFILES: tuple[Profile, ...] = (
    Profile("standard", 1.0, 0.11, 1.0),
    Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
)


def scaled_sigmoid(position: float) -> float:
    """NAB's reward curve: 2 sigmoid(-5 p) - 1, and -1 from p = 3 on."""
    if position >= PAST_WINDOW_FULL_COST:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probation_rows(n_rows: int) -> int:
    """Rows at the start of a file whose detections are not scored."""
    return int(min(math.floor(PROBATION_SHARE * n_rows), PROBATION_SHARE * PROBATION_CAP_ROWS))


@dataclass
class FileScore:
    """One file's score under one profile."""

    raw: float
    null: float  # what the null detector (no detections) scores
    perfect: float  # what the perfect detector scores
    windows: int
    detected: int  # windows with a detection
    false_positives: int  # scored detections outside every window
    window_scores: list[float] = field(default_factory=list)  # per window: its best detection, or -fn


def score_file(n_rows: int, windows: Sequence[tuple[int, int]], detections: Iterable[int],
               profile: Profile) -> FileScore:
    """Score the detections (row indices) of one file with labelled `windows` ([first, last] rows).

    Windows must be in order and disjoint (NAB's are)."""
    wins = sorted(windows)
    for (a, b), (c, _) in zip(wins, wins[1:], strict=False):
        if c <= b:
            raise ValueError(f"windows overlap: [{a}, {b}] and [{c}, ...]")
    for a, b in wins:
        if not 0 <= a <= b < n_rows:
            raise ValueError(f"window [{a}, {b}] is not within the file's {n_rows} rows")
    probation = probation_rows(n_rows)
    scored = [w for w in wins if w[1] >= probation]  # a window wholly in probation is not scored
    best: dict[tuple[int, int], float] = {w: -profile.fn for w in scored}
    fp_cost = 0.0
    false_positives = 0
    max_tp = scaled_sigmoid(-1.0)
    for i in sorted(set(detections)):
        if not 0 <= i < n_rows:
            raise ValueError(f"detection at row {i} is outside the file's {n_rows} rows")
        if i < probation:
            continue
        inside = next((w for w in scored if w[0] <= i <= w[1]), None)
        if inside is not None:
            first, last = inside
            width = last - first + 1
            value = scaled_sigmoid(-(last - i + 1) / width) * profile.tp / max_tp
            best[inside] = max(best[inside], value)
            continue
        before = [w for w in wins if w[1] < i]
        if before:
            first, last = before[-1]
            width = last - first + 1
            position = abs(i - last) / (width - 1) if width > 1 else PAST_WINDOW_FULL_COST
        else:
            position = PAST_WINDOW_FULL_COST
        fp_cost += scaled_sigmoid(position) * profile.fp
        false_positives += 1
    window_scores = [best[w] for w in scored]
    return FileScore(
        raw=sum(window_scores) + fp_cost,
        null=-profile.fn * len(scored),
        perfect=profile.tp * len(wins),
        windows=len(wins),
        detected=sum(1 for w in scored if best[w] > -profile.fn),
        false_positives=false_positives,
        window_scores=window_scores,
    )


def normalised(scores: Iterable[FileScore]) -> float:
    """The corpus score 100 x (raw - null) / (perfect - null), each term summed over the files."""
    items = list(scores)
    raw = sum(s.raw for s in items)
    null = sum(s.null for s in items)
    perfect = sum(s.perfect for s in items)
    if perfect == null:
        raise ValueError("the corpus has no labelled windows: its score is undefined")
    return 100.0 * (raw - null) / (perfect - null)
