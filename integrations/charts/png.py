"""Charts as PNG images (matplotlib's Agg backend, no display): the chart attached to Slack alerts.

Draws the same model.Chart as svg.py: usage with its gaps, usual levels and thresholds, quota
lines, alert markers, the shaded episode, a y axis from zero.
"""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime

from integrations.charts.model import Chart, short_number
from integrations.charts.svg import COLORS, marker_color

_DASH = {"usage": "-", "baseline": "-", "threshold": "--", "quota": (0, (6, 3))}


def render_png(chart: Chart, width: int = 960, height: int = 400, dpi: int = 120) -> bytes:
    """The chart as PNG bytes (width x height pixels)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.07, 0.22, 0.91, 0.68))  # fixed margins: no layout pass (tight_layout doubles the time)
    xs = [datetime.fromtimestamp(chart.start + (j + 0.5) * chart.step, UTC) for j in range(chart.n)]
    if chart.span is not None:
        ax.axvspan(_dt(max(chart.span[0], chart.start)), _dt(min(chart.span[1], chart.end)), color="#fde68a",
                   alpha=0.35, linewidth=0)
    for line in sorted(chart.lines, key=lambda ln: ln.role == "usage"):
        color = line.color or COLORS[line.role]
        ys = [v if math.isfinite(v) else math.nan for v in line.values]
        segments = _segments(ys, line.breaks)
        for k, (lo, hi) in enumerate(segments):
            ax.plot(xs[lo:hi], ys[lo:hi], color=color, linestyle=_DASH[line.role],
                    linewidth=2.0 if line.role == "usage" else 1.4, label=line.label if k == 0 else None)
            if line.role == "usage":
                ax.fill_between(xs[lo:hi], [0 if math.isfinite(v) else math.nan for v in ys[lo:hi]], ys[lo:hi],
                                color=color, alpha=0.10, linewidth=0)
    for lv in chart.levels:
        ax.axhline(lv.value, color=COLORS.get(lv.role, COLORS["threshold"]), linestyle=_DASH.get(lv.role, "--"),
                   linewidth=1.3, label=lv.label)
    seen: set[tuple[str, str]] = set()
    for m in chart.markers:
        if not chart.start <= m.at <= chart.end:
            continue
        key = (m.event, m.severity)
        label = None if key in seen else (m.event if m.event not in ("fired", "renotified") else
                                          f"{m.event} ({m.severity})")
        seen.add(key)
        ax.axvline(_dt(m.at), color=marker_color(m.event, m.severity), linestyle=":", linewidth=1.4, label=label)
    lo, hi = chart.y_range()
    ax.set_ylim(lo, hi)
    ax.axhline(0, color="#374151", linewidth=1.0)  # the zero axis: a 2% wiggle stays a wiggle
    ax.set_xlim(_dt(chart.start), _dt(chart.end))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: short_number(v)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d" if chart.step >= 86_400 else "%b %d %H:%M"))
    ax.grid(axis="y", color="#e5e7eb", linewidth=0.8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(chart.title, loc="left", fontsize=11, fontweight="bold")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=7, ncol=4, frameon=False)
    ax.tick_params(labelsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _segments(ys: list[float], breaks: tuple[int, ...]) -> list[tuple[int, int]]:
    cuts = sorted({0, len(ys), *(b for b in breaks if 0 < b < len(ys))})
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
