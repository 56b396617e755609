"""The NAB scorer (bench/nab_score.py) on hand-made cases, each worked out from the published method,
and the NAB runner's pieces (bench/nab.py) that do not need the data set."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.nab import NabFile, Scored, detections, episode_starts, rules_text, scores_json
from bench.nab_score import PROFILES, normalised, probation_rows, scaled_sigmoid, score_file

STANDARD, LOW_FP, LOW_FN = PROFILES
ROWS = 1000  # probation: 150 rows
WINDOW = (400, 499)  # width 100


def sig(p: float) -> float:
    return 2 / (1 + math.exp(5 * p)) - 1


def test_profiles_and_probation_are_nabs() -> None:
    assert [(p.name, p.tp, p.fp, p.fn) for p in PROFILES] == [
        ("standard", 1.0, 0.11, 1.0), ("reward_low_FP_rate", 1.0, 0.22, 1.0), ("reward_low_FN_rate", 1.0, 0.11, 2.0)]
    assert probation_rows(1000) == 150 and probation_rows(4032) == 604
    assert probation_rows(22695) == 750  # at most 0.15 x 5000 rows
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5) and scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.0) == -1.0 and scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)


def test_null_and_perfect_detectors_score_0_and_100() -> None:
    null = score_file(ROWS, [WINDOW], [], STANDARD)
    perfect = score_file(ROWS, [WINDOW], [WINDOW[0]], STANDARD)
    assert (null.raw, null.null, null.perfect) == (-1.0, -1.0, 1.0)
    assert perfect.raw == pytest.approx(1.0)
    assert normalised([null]) == 0.0 and normalised([perfect]) == pytest.approx(100.0)


def test_the_earliest_detection_in_a_window_counts_and_later_ones_are_free() -> None:
    mid = 449  # position -(499 - 449 + 1) / 100 = -0.51
    one = score_file(ROWS, [WINDOW], [mid], STANDARD)
    assert one.raw == pytest.approx(sig(-0.51) / sig(-1.0))
    many = score_file(ROWS, [WINDOW], [mid, 460, 470, 499], STANDARD)
    assert many.raw == one.raw and many.false_positives == 0 and many.detected == 1
    last = score_file(ROWS, [WINDOW], [499], STANDARD)  # p = -0.01: just above 0
    assert 0 < last.raw < 0.03


def test_false_positives_cost_by_distance_after_a_window_and_fully_before_one() -> None:
    before = score_file(ROWS, [WINDOW], [300], STANDARD)
    assert before.raw == pytest.approx(-1.0 - 0.11) and before.false_positives == 1
    just_after = score_file(ROWS, [WINDOW], [505], STANDARD)  # p = 6 / 99
    assert just_after.raw == pytest.approx(-1.0 + 0.11 * sig(6 / 99))
    far = score_file(ROWS, [WINDOW], [900], LOW_FP)  # p >= 3: the full weight
    assert far.raw == pytest.approx(-1.0 - 0.22)
    no_windows = score_file(ROWS, [], [300, 301], STANDARD)
    assert (no_windows.raw, no_windows.null, no_windows.perfect) == (pytest.approx(-0.22), 0.0, 0.0)


def test_probation_detections_count_for_nothing() -> None:
    early = score_file(ROWS, [(100, 200)], [50, 120, 149], STANDARD)
    assert early.raw == -1.0 and early.false_positives == 0  # 120 is in the window but in probation
    after = score_file(ROWS, [(100, 200)], [160], STANDARD)  # same window, after probation
    assert after.raw == pytest.approx(sig(-(200 - 160 + 1) / 101) / sig(-1.0))
    unscored = score_file(ROWS, [(10, 100)], [], STANDARD)  # wholly in probation: not scored ...
    assert (unscored.windows, unscored.null, unscored.perfect) == (1, 0.0, 1.0)  # ... yet perfect counts it (NAB)


def test_fn_weight_and_the_corpus_normalisation_sum_over_files() -> None:
    a = score_file(ROWS, [WINDOW], [], LOW_FN)
    b = score_file(ROWS, [WINDOW, (700, 799)], [400, 300], LOW_FN)
    assert a.raw == -2.0 and b.raw == pytest.approx(1.0 - 2.0 - 0.11)
    raw, null, perfect = a.raw + b.raw, -6.0, 3.0
    assert normalised([a, b]) == pytest.approx(100 * (raw - null) / (perfect - null))


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        score_file(ROWS, [(400, 500), (500, 600)], [], STANDARD)
    with pytest.raises(ValueError, match="outside"):
        score_file(ROWS, [WINDOW], [1000], STANDARD)
    with pytest.raises(ValueError, match="no labelled windows"):
        normalised([score_file(ROWS, [], [], STANDARD)])


def test_rules_text_sets_the_bucket_and_overrides() -> None:
    preset = '[defaults]\nbucket = "1h"\n[[rule]]\nid = "a"\n[rule.threshold]\nscore = 4.0\n# adapt = 6\n'
    text = rules_text(preset, 300, {"score": "8.0", "adapt": "3", "learn": '"2d"'})
    assert 'bucket = "5m"' in text and "score = 8.0" in text and "adapt = 3" in text and 'learn = "2d"' in text
    assert "score = 4.0" not in text and rules_text(preset, 1800).count('bucket = "30m"') == 1


def test_detections_are_the_rows_of_notified_alerts() -> None:
    times = np.arange(0, 3000, 300) + 60  # rows 1 minute into each 5-minute bucket
    nab = NabFile("x/y.csv", times, np.zeros(10), [])
    events = [
        {"event": "fired", "notified": True, "window": ["1970-01-01T00:10:00Z", "1970-01-01T00:15:00Z"]},
        {"event": "fired", "notified": False, "window": ["1970-01-01T00:15:00Z", "1970-01-01T00:20:00Z"]},
        {"event": "resolved", "notified": True, "window": ["1970-01-01T00:20:00Z", "1970-01-01T00:25:00Z"]},
        {"event": "renotified", "notified": True, "window": ["1970-01-01T00:25:00Z", "1970-01-01T00:30:00Z"]},
    ]
    assert nab.step == 300 and detections(events, nab) == [2, 5]


def test_a_repeated_hour_is_one_reading_per_bucket_at_its_first_row() -> None:
    """A file whose clock is set back repeats timestamps (machine_temperature: an hour twice): each
    bucket is written once, with the mean of its rows (a gauge read again, not more usage: a sum
    doubled the temperature and fired), an alert maps to the bucket's first row even though the
    timestamps are not increasing, and the direct computation sees the same values and rows."""
    times = np.array([0, 300, 600, 300, 600, 900])  # rows 3 and 4 repeat buckets 300 and 600
    nab = NabFile("x/y.csv", times, np.array([10.0, 11.0, 12.0, 13.0, 14.0, 15.0]), [])
    starts, first, means = nab.readings()
    assert starts.tolist() == [0, 300, 600, 900] and first.tolist() == [0, 1, 2, 5]
    assert means.tolist() == [10.0, 12.0, 13.0, 15.0]
    events = [{"event": "fired", "notified": True, "window": [f"1970-01-01T00:{m:02d}:00Z", ""]} for m in (5, 10, 15)]
    assert detections(events, nab) == [1, 2, 5]


def test_saved_scores_are_per_bucket_with_its_row_and_none_where_undecided() -> None:
    """--save-scores: both signals per bucket that has a row (a gap's bucket has none), that row, None
    where the detector did not decide, with the file's rows and windows, so combination rules are
    scored offline; replayed through episode_starts they give the direct run's detections."""
    nab = NabFile("x/y.csv", np.array([0, 300, 900, 960]), np.zeros(4), [(1, 3)])
    sc = Scored(np.array([0.0, 1.0, 0.0, 5.0]), np.array([False, True, True, True]), {0: 0, 1: 1, 3: 3},
                np.array([9.0, -1.0, 0.0, 5.0]), np.array([9.0, 0.5, 0.0, np.nan]))
    saved = scores_json([nab], {nab.name: sc})["x/y.csv"]
    assert saved == {"rows": 4, "windows": [(1, 3)], "row": [0, 1, 3], "bucket": [None, -1.0, 5.0],
                     "shift": [None, 0.5, None]}
    score = np.array([max(abs(b or 0.0), abs(s or 0.0)) for b, s in zip(saved["bucket"], saved["shift"], strict=True)])
    offline = Scored(score, np.array([b is not None for b in saved["bucket"]]), dict(enumerate(saved["row"])))
    assert episode_starts(offline, 4.0, 2.0) == episode_starts(sc, 4.0, 2.0) == [3]
