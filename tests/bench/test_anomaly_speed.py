"""bench/anomaly_speed: every rule is timed, and --baseline adds another anomaly module's row."""

from __future__ import annotations

from pathlib import Path

import rules.detectors.anomaly as anomaly
from bench.anomaly_speed import baseline_detector, main, measure


def test_measure_times_every_rule_and_the_baseline_side_by_side() -> None:
    got = measure(accounts=3, step=3600, repeat=1, baseline=Path(anomaly.__file__))
    assert set(got) == {"spike", "drop", "threshold", "anomaly", "anomaly (baseline)"}
    assert all(seconds > 0 for seconds in got.values())


def test_the_baseline_module_detects_with_its_own_params(capsys) -> None:
    run = baseline_detector(Path(anomaly.__file__))
    assert callable(run)
    assert main(["--accounts", "2", "--repeat", "1", "--baseline", anomaly.__file__]) == 0
    out = capsys.readouterr().out
    assert "| anomaly (baseline) |" in out and "| anomaly |" in out
