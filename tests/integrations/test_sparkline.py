"""The Slack text sparkline is scaled from zero: small wiggles stay small, real falls show."""

from __future__ import annotations

from integrations.sparkline import sparkline


def test_a_two_percent_wiggle_is_a_row_of_full_bars_not_a_collapse() -> None:
    line = sparkline([100.0, 98.0, 100.0, 99.0, 101.0, 98.5, 100.0])
    assert set(line) == {"█"}  # min-max scaling drew 98 as the lowest bar


def test_a_weekend_at_60_percent_is_a_lower_bar_not_the_bottom() -> None:
    line = sparkline([100.0] * 5 + [60.0, 60.0])
    assert line[:5] == "█████"
    assert line[5] not in ("▁", " ", "█")  # about 60% high: clearly lower, clearly not zero


def test_zero_is_the_bottom_bar_and_missing_is_a_space() -> None:
    line = sparkline([80.0, 0.0, None, 40.0])
    assert line == "█▁ ▅"
    assert sparkline([0.0, 0.0]) == "▁▁"
    assert sparkline([None, None]) == ""


def test_negative_values_extend_the_scale_below_zero() -> None:
    line = sparkline([-10.0, 0.0, 10.0])
    assert line[0] == "▁" and line[2] == "█"
    assert line[1] not in ("▁", "█")
