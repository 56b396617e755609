"""Charts: zero axis, gaps for missing data, levels and markers, escaping; the same chart as PNG."""

from __future__ import annotations

import math
import re

import numpy as np

from integrations.charts.build import EpisodeMark, episode_chart, quota_chart, usage_chart
from integrations.charts.model import Chart, Level, Line, Marker, nice_ticks
from integrations.charts.png import render_png
from integrations.charts.svg import render_svg
from rules.model import DAY, AccountFacts, Reference

START = 1_790_000_000 // DAY * DAY


def _y_of_value(svg: str, value_label: str) -> float:
    m = re.search(r'<text x="[\d.]+" y="([\d.]+)" text-anchor="end" fill="#6b7280">' + re.escape(value_label), svg)
    assert m, value_label
    return float(m.group(1))


def test_the_y_axis_starts_at_zero_so_a_small_wiggle_stays_small() -> None:
    wiggle = tuple([100.0, 98.0, 101.0, 99.0, 100.0])
    c = Chart("w", START, DAY, 5, (Line("calls", "usage", wiggle),))
    lo, hi = c.y_range()
    assert lo == 0.0 and hi >= 101.0
    svg = render_svg(c)
    assert 'class="zero-axis"' in svg
    ys = [float(y) for y in re.findall(r",([\d.]+)", re.search(r'<polyline points="([^"]+)"', svg).group(1))]
    plot_h = _y_of_value(svg, "0") - _y_of_value(svg, "100")
    assert (max(ys) - min(ys)) < 0.05 * plot_h  # 98..101 spans a few pixels, not the whole chart
    neg = Chart("n", START, DAY, 2, (Line("x", "usage", (-5.0, 10.0)),))
    assert neg.y_range()[0] == -5.0 and 0.0 in nice_ticks(*neg.y_range())


def test_missing_buckets_are_gaps_not_zeros_and_everything_shown_is_escaped() -> None:
    vals = (10.0, 12.0, math.nan, 11.0, 13.0)
    c = Chart("<b>Acme & co</b>", START, DAY, 5, (Line("calls", "usage", vals),),
              (Level("quota <50>", "quota", 50.0),),
              (Marker(START + 2 * DAY, "fired", "rule <x> fired", "critical"),))
    svg = render_svg(c)
    assert len(re.findall(r"<polyline ", svg)) == 2  # the line breaks at the missing day
    assert "<b>" not in svg and "&lt;b&gt;Acme &amp; co&lt;/b&gt;" in svg and "quota &lt;50&gt;" in svg
    assert 'class="marker marker-fired"' in svg and "rule &lt;x&gt; fired" in svg and "#dc2626" in svg


def test_usage_chart_draws_each_rules_levels_and_the_alerts() -> None:
    from rules.loader import load_rules_text

    rules = load_rules_text("""
[[rule]]
id = "s"
kind = "spike"
metric = "calls"
bucket = "1d"
[rule.baseline]
window = "7d"
min_points = 3
[rule.threshold]
ratio = 2.0
""", "r.toml").rules
    vals = np.full(30, 100.0)
    vals[25] = 400.0
    mark = EpisodeMark(1, "s", "calls", "warning", "firing", START + 26 * DAY, fired_at=START + 26 * DAY)
    c = usage_chart("calls", vals, START, DAY, rules, [mark], show_from=START + 10 * DAY)
    assert c.n == 20 and c.start == START + 10 * DAY
    roles = [ln.role for ln in c.lines]
    assert roles == ["usage", "baseline", "threshold"]
    assert c.lines[1].values[0] == 100.0 and c.lines[2].values[0] == 200.0
    assert [m.event for m in c.markers] == ["fired"]


def test_quota_chart_is_the_period_to_date_against_the_quota() -> None:
    acct = AccountFacts("a", "A", quotas={"calls": 1000.0}, billing_day=1)
    vals = np.full(60, 40.0)
    c = quota_chart(acct, "calls", vals, START, DAY)
    assert c is not None
    line = c.lines[0]
    assert line.breaks and max(v for v in line.values if not math.isnan(v)) <= 31 * 40.0
    assert [lv.value for lv in c.levels] == [1000.0]
    assert quota_chart(AccountFacts("b", "B"), "calls", vals, START, DAY) is None


def test_an_episode_chart_uses_what_it_stored_and_renders_to_png() -> None:
    ref = Reference(START + 20 * DAY, DAY, (100.0,))
    mark = EpisodeMark(7, "drop", "calls", "critical", "firing", START + 20 * DAY, fired_at=START + 21 * DAY,
                       reference=ref, explanation={"kind": "drop", "baseline": 100.0, "threshold": 50.0,
                                                   "at": START + 21 * DAY, "bucket_start": START + 20 * DAY})
    assert mark.step == DAY
    vals = np.concatenate([np.full(20, 100.0), np.full(5, 10.0)])
    c = episode_chart(mark, vals, START, DAY)
    assert [ln.role for ln in c.lines] == ["usage", "baseline", "threshold"]
    assert set(c.lines[2].values) == {50.0} and c.span == (START + 20 * DAY, START + 25 * DAY)
    png = render_png(c)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
