"""Number and time formatting used in detector messages (rules.detectors.format)."""

from __future__ import annotations

import pytest

from rules.detectors import format as fmt
from rules.detectors.spike_drop import SpikeParams
from rules.model import DAY, Rule


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (12_345.0, "12,345"),
        (12_345.6, "12,346"),
        (1_234_567.0, "1,234,567"),
        (150.4, "150"),
        (12.0, "12"),
        (12.34, "12.3"),
        (3.0, "3"),
        (2.5, "2.5"),
        (0.125, "0.125"),
        (0.0, "0"),
        (-42.0, "-42"),
        (0.00002, "2.0e-05"),
        (None, "n/a"),
        (float("nan"), "n/a"),
        (float("inf"), "infinity"),
    ],
)
def test_number(x: float | None, text: str) -> None:
    assert fmt.number(x) == text


@pytest.mark.parametrize(
    ("r", "text"),
    [
        (3.14, "3.1x"),
        (2.0, "2x"),
        (12.25, "12.2x"),
        (250.0, "250x"),
        (0.25, "0.25x"),
        (0.5, "0.5x"),
        (0.0, "0x"),
    ],
)
def test_ratio(r: float, text: str) -> None:
    assert fmt.ratio(r) == text


def test_ratio_missing() -> None:
    assert fmt.ratio(None) == "n/a"


@pytest.mark.parametrize(
    ("f", "text"),
    [
        (0.82, "82%"),
        (0.8, "80%"),
        (1.0, "100%"),
        (0.9996, "99%"),
        (1.234, "123%"),
        (0.0, "0%"),
        (0.0042, "0.4%"),
        (0.001, "0.1%"),
        (0.00099, "<0.1%"),  # 99 of a 100,000 quota: not "0.0%", which reads as none
        (1e-9, "<0.1%"),
        (0.29, "29%"),  # 0.29 * 100 is 28.999999999999996
    ],
)
def test_percent_rounds_down(f: float, text: str) -> None:
    assert fmt.percent(f) == text


def test_change() -> None:
    assert (fmt.change(0.1), fmt.change(-0.25), fmt.change(None)) == ("+10%", "-25%", "n/a")


def test_moment() -> None:
    t = 1_793_491_200  # 2026-11-01T00:00:00Z
    assert fmt.moment(t) == "2026-11-01 00:00 UTC"
    assert fmt.moment(t, DAY) == "2026-11-01"
    assert fmt.moment(t + 3600, DAY) == "2026-11-01 01:00 UTC"
    assert fmt.local_date(t + 3600, "America/New_York") == "2026-10-31"


def test_duration_prefers_days() -> None:
    assert [fmt.duration(s) for s in (7 * DAY, 28 * DAY, 3600, 90 * 60, 60)] == [
        "7d",
        "28d",
        "1h",
        "1h30m",
        "1m",
    ]


def test_rule_location() -> None:
    r = Rule(
        "api-spike", "spike", "api_calls", 3600, SpikeParams(), source_file="rules/usage.toml", source_line=12
    )
    assert fmt.rule_location(r) == "rule 'api-spike' (rules/usage.toml:12)"
    bare = Rule("x", "spike", "api_calls", 3600, SpikeParams())
    assert fmt.rule_location(bare) == "rule 'x' (<no file>)"


def test_count_and_last_say_one_in_the_singular() -> None:
    assert [fmt.count(n, "day") for n in (1, 1.0, 0.3, 0, 2, 10.5, 1234)] == [
        "1 day", "1 day", "0.3 days", "0 days", "2 days", "10.5 days", "1,234 days"]
    assert fmt.last(1, "billing period") == "the last billing period"
    assert fmt.last(3, "window") == "each of the last 3 windows"
    assert fmt.last(2, "billing period", each="one") == "one of the last 2 billing periods"


def test_apart_shows_two_different_numbers_differently() -> None:
    assert fmt.apart(100.4, 100) == ("100.4", "100")
    assert fmt.apart(9.96, 10) == ("9.96", "10")
    assert fmt.apart(1234.0, 1000) == ("1,234", "1,000")  # already apart: as number() writes them
    assert fmt.apart(100, 100) == ("100", "100")
    assert fmt.apart(1e15 + 2, 1e15) == ("1,000,000,000,000,002", "1,000,000,000,000,000")
    assert fmt.apart(float("inf"), 100) == ("infinity", "100")


def test_counts_and_shares_read_in_words_at_any_size() -> None:
    """A reviewer's finds: a float count of a million read "1e+06 days", an infinite share raised."""
    from rules.detectors import format as fmt

    assert [fmt.count(x, "day") for x in (1_000_000.0, 1.0, 0.5, 2)] == ["1,000,000 days", "1 day", "0.5 days", "2 days"]
    assert fmt.percent(float("inf")) == fmt.percent(float("nan")) == "n/a"
