"""Charts as inline SVG (no script, no external resource): for the web UI and the backtest report.

The SVG is a plain string: every text is XML-escaped, every number is formatted here, so a page
or a report file can embed it as is. Hovering a marker or a line shows its label (<title>).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from html import escape

from integrations.charts.model import Chart, Line, nice_ticks, short_number

COLORS = {"usage": "#2563eb", "baseline": "#6b7280", "threshold": "#d97706", "quota": "#dc2626"}
DASHES = {"usage": "", "baseline": "", "threshold": "6 4", "quota": "8 4"}
MARKER_COLORS = {"resolved": "#16a34a", "acknowledged": "#6b7280", "snoozed": "#6b7280", "other": "#6b7280"}
SEVERITY_COLORS = {"critical": "#dc2626", "warning": "#d97706", "info": "#2563eb"}
MARKER_SYMBOLS = {"fired": "▲", "renotified": "△", "resolved": "✓", "acknowledged": "●", "snoozed": "◆"}


def marker_color(event: str, severity: str) -> str:
    if event in ("fired", "renotified"):
        return SEVERITY_COLORS.get(severity, SEVERITY_COLORS["warning"])
    return MARKER_COLORS.get(event, MARKER_COLORS["other"])


def time_label(t: int, step: int) -> str:
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%b %d") if step >= 86_400 else d.strftime("%b %d %H:%M")


def _f(x: float) -> str:
    return f"{x:.1f}"


class _Frame:
    """Pixel positions of a chart's buckets and values."""

    def __init__(self, chart: Chart, width: int, height: int, top: int) -> None:
        self.chart = chart
        self.left, self.right, self.top, self.bottom = 58, width - 14, top, height - 26
        self.lo, self.hi = chart.y_range()

    def x_of_time(self, t: float) -> float:
        c = self.chart
        frac = (t - c.start) / (c.end - c.start) if c.end > c.start else 0.0
        return self.left + max(0.0, min(1.0, frac)) * (self.right - self.left)

    def x_of_bucket(self, j: int) -> float:
        c = self.chart
        return self.x_of_time(c.start + (j + 0.5) * c.step)

    def y(self, v: float) -> float:
        frac = (v - self.lo) / (self.hi - self.lo)
        return self.bottom - frac * (self.bottom - self.top)


def _runs(values: tuple[float, ...], breaks: tuple[int, ...] = ()) -> list[list[int]]:
    """Index runs of consecutive finite values (a gap, or a bucket in `breaks`, breaks the line)."""
    runs: list[list[int]] = []
    cur: list[int] = []
    starts = set(breaks)
    for j, v in enumerate(values):
        if j in starts and cur:
            runs.append(cur)
            cur = []
        if math.isfinite(v):
            cur.append(j)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def _line(fr: _Frame, line: Line, style: str) -> list[str]:
    out = []
    color, dash = line.color or COLORS[line.role], DASHES[line.role]
    width = "2" if line.role == "usage" else "1.6"
    for run in _runs(line.values, line.breaks):
        pts = " ".join(f"{_f(fr.x_of_bucket(j))},{_f(fr.y(line.values[j]))}" for j in run)
        if line.role == "usage" and len(run) > 1:
            base = _f(fr.y(max(fr.lo, 0.0)))
            area = f"{_f(fr.x_of_bucket(run[0]))},{base} {pts} {_f(fr.x_of_bucket(run[-1]))},{base}"
            out.append(f'<polygon points="{area}" fill="{color}" fill-opacity="0.10" stroke="none"/>')
        if len(run) == 1:
            j = run[0]
            out.append(f'<circle cx="{_f(fr.x_of_bucket(j))}" cy="{_f(fr.y(line.values[j]))}" r="2" '
                       f'fill="{color}"/>')
        else:
            out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="{width}" '
                       f'stroke-linejoin="round"{f" stroke-dasharray={chr(34)}{dash}{chr(34)}" if dash else ""}'
                       f'{style}><title>{escape(line.label)}</title></polyline>')
    return out


def render_svg(chart: Chart, width: int = 760, height: int = 240) -> str:
    """The chart as one <svg> element (width x height CSS pixels, scalable)."""
    title_h = 20 if chart.title else 0
    legend = _legend_rows(chart, width - 72) if chart.legend else []
    top = 10 + title_h + 16 * len(legend)
    fr = _Frame(chart, width, height, top)
    label = escape(chart.title or "usage chart")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="{label}" '
           'font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="11">',
           f"<title>{label}</title>",
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    if chart.title:
        out.append(f'<text x="{fr.left}" y="18" font-size="13" font-weight="600" fill="#111827">'
                   f"{escape(chart.title)}</text>")
    if chart.span is not None:
        a, b = fr.x_of_time(chart.span[0]), fr.x_of_time(chart.span[1])
        if b > a:
            out.append(f'<rect class="span" x="{_f(a)}" y="{fr.top}" width="{_f(b - a)}" '
                       f'height="{fr.bottom - fr.top}" fill="#fde68a" fill-opacity="0.35"/>')
    for t in nice_ticks(fr.lo, fr.hi):
        y = _f(fr.y(t))
        zero = t == 0.0
        out.append(f'<line x1="{fr.left}" x2="{fr.right}" y1="{y}" y2="{y}" '
                   f'stroke="{"#374151" if zero else "#e5e7eb"}" stroke-width="{"1.2" if zero else "1"}"'
                   f'{" class=" + chr(34) + "zero-axis" + chr(34) if zero else ""}/>')
        out.append(f'<text x="{fr.left - 6}" y="{_f(fr.y(t) + 3.5)}" text-anchor="end" fill="#6b7280">'
                   f"{escape(short_number(t))}</text>")
    n_labels = max(1, min(7, chart.n))
    every = max(1, math.ceil(chart.n / n_labels))
    for j in range(0, chart.n, every):
        x = _f(fr.x_of_bucket(j))
        out.append(f'<text x="{x}" y="{fr.bottom + 16}" text-anchor="middle" fill="#6b7280">'
                   f"{escape(time_label(chart.start + j * chart.step, chart.step))}</text>")
    for lv in chart.levels:
        y = _f(fr.y(lv.value))
        color = COLORS.get(lv.role, COLORS["threshold"])
        out.append(f'<line class="level" x1="{fr.left}" x2="{fr.right}" y1="{y}" y2="{y}" stroke="{color}" '
                   f'stroke-width="1.4" stroke-dasharray="{DASHES.get(lv.role) or "6 4"}">'
                   f"<title>{escape(lv.label)}</title></line>")
        out.append(f'<text x="{fr.right - 4}" y="{_f(fr.y(lv.value) - 4)}" text-anchor="end" fill="{color}">'
                   f"{escape(lv.label)}</text>")
    for line in sorted(chart.lines, key=lambda ln: ln.role == "usage"):  # usage on top
        out.extend(_line(fr, line, f' class="line-{line.role}"'))
    for m in chart.markers:
        if not chart.start <= m.at <= chart.end:
            continue
        x = _f(fr.x_of_time(m.at))
        color = marker_color(m.event, m.severity)
        symbol = MARKER_SYMBOLS.get(m.event, "•")
        out.append(f'<g class="marker marker-{escape(m.event)}"><title>{escape(m.label)}</title>'
                   f'<line x1="{x}" x2="{x}" y1="{fr.top}" y2="{fr.bottom}" stroke="{color}" '
                   f'stroke-width="1.2" stroke-dasharray="2 2"/>'
                   f'<text x="{x}" y="{fr.top + 10}" text-anchor="middle" fill="{color}" font-size="11">'
                   f"{symbol}</text></g>")
    for i, row in enumerate(legend):
        out.extend(_legend_row(row, fr.left, title_h + 16 + 16 * i))
    if chart.note:
        out.append(f'<text x="{fr.right}" y="18" text-anchor="end" fill="#6b7280">{escape(chart.note)}</text>')
    out.append("</svg>")
    return "".join(out)


LegendItem = tuple[str, str, str, str]  # (text, color, dash, symbol: "" = a line sample)


def _legend_rows(chart: Chart, width: float) -> list[list[LegendItem]]:
    """The legend's items (lines, levels, marker kinds), wrapped into rows of at most `width` pixels."""
    items: list[LegendItem] = [(ln.label, ln.color or COLORS[ln.role], DASHES[ln.role], "") for ln in chart.lines]
    items += [(lv.label, COLORS.get(lv.role, COLORS["threshold"]), DASHES.get(lv.role) or "6 4", "")
              for lv in chart.levels if not any(it[0] == lv.label for it in items)]
    events = dict.fromkeys((m.event, m.severity) for m in chart.markers if chart.start <= m.at <= chart.end)
    for event, severity in events:
        text = event if event not in ("fired", "renotified") else f"{event} ({severity})"
        items.append((text, marker_color(event, severity), "", MARKER_SYMBOLS.get(event, "•")))
    rows: list[list[LegendItem]] = [[]]
    used = 0.0
    for it in items:
        w = _item_width(it)
        if rows[-1] and used + w > width:
            rows.append([])
            used = 0.0
        rows[-1].append(it)
        used += w
    return [r for r in rows if r]


def _item_width(it: LegendItem) -> float:
    return 28 + 6.2 * len(it[0])


def _legend_row(row: list[LegendItem], x0: int, y: int) -> list[str]:
    out = []
    x = float(x0)
    for text, color, dash, symbol in row:
        if symbol:
            out.append(f'<text x="{_f(x)}" y="{y}" fill="{color}">{symbol} {escape(text)}</text>')
        else:
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<line x1="{_f(x)}" x2="{_f(x + 16)}" y1="{y - 4}" y2="{y - 4}" stroke="{color}" '
                       f'stroke-width="2"{dash_attr}/>')
            out.append(f'<text x="{_f(x + 20)}" y="{y}" fill="#374151">{escape(text)}</text>')
        x += _item_width((text, color, dash, symbol))
    return out


PALETTE = ("#2563eb", "#dc2626", "#d97706", "#16a34a", "#7c3aed", "#0891b2", "#be185d", "#4b5563", "#65a30d",
           "#ea580c")


def render_bars(title: str, start: int, step: int, series: list[tuple[str, tuple[float, ...]]], width: int = 760,
                height: int = 220) -> str:
    """Stacked bars per bucket (e.g. alerts per day and rule), from zero, one colour per series."""
    n = max((len(v) for _, v in series), default=0)
    totals = [sum(v[j] for _, v in series if j < len(v)) for j in range(n)]
    chart = Chart(title, start, step, n, (Line("total", "usage", tuple(float(t) for t in totals)),), legend=False)
    items = [(label, PALETTE[k % len(PALETTE)]) for k, (label, _) in enumerate(series)]
    rows: list[list[tuple[str, str]]] = [[]]
    used = 0.0
    for it in items:
        w = 28 + 6.2 * len(it[0])
        if rows[-1] and used + w > width - 72:
            rows.append([])
            used = 0.0
        rows[-1].append(it)
        used += w
    title_h = 20 if title else 0
    fr = _Frame(chart, width, height, 10 + title_h + 16 * len([r for r in rows if r]))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart bars" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}" '
           'font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="11">',
           f"<title>{escape(title)}</title>", f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    if title:
        out.append(f'<text x="{fr.left}" y="18" font-size="13" font-weight="600" fill="#111827">{escape(title)}</text>')
    for t in nice_ticks(fr.lo, fr.hi):
        y = _f(fr.y(t))
        out.append(f'<line x1="{fr.left}" x2="{fr.right}" y1="{y}" y2="{y}" stroke="{"#374151" if t == 0 else "#e5e7eb"}"'
                   f'{" class=" + chr(34) + "zero-axis" + chr(34) if t == 0 else ""}/>')
        out.append(f'<text x="{fr.left - 6}" y="{_f(fr.y(t) + 3.5)}" text-anchor="end" fill="#6b7280">'
                   f"{escape(short_number(t))}</text>")
    bw = max(1.0, (fr.right - fr.left) / max(1, n) * 0.8)
    for j in range(n):
        base = 0.0
        x = fr.x_of_bucket(j) - bw / 2
        for k, (label, vals) in enumerate(series):
            v = vals[j] if j < len(vals) else 0.0
            if v <= 0:
                continue
            y0, y1 = fr.y(base), fr.y(base + v)
            out.append(f'<rect class="bar" x="{_f(x)}" y="{_f(y1)}" width="{_f(bw)}" height="{_f(y0 - y1)}" '
                       f'fill="{PALETTE[k % len(PALETTE)]}"><title>{escape(label)}: {v:g} · '
                       f'{escape(time_label(start + j * step, step))}</title></rect>')
            base += v
    every = max(1, math.ceil(n / 7))
    for j in range(0, n, every):
        out.append(f'<text x="{_f(fr.x_of_bucket(j))}" y="{fr.bottom + 16}" text-anchor="middle" fill="#6b7280">'
                   f"{escape(time_label(start + j * step, step))}</text>")
    for i, row in enumerate(r for r in rows if r):
        x = float(fr.left)
        y = title_h + 16 + 16 * i
        for label, color in row:
            out.append(f'<rect x="{_f(x)}" y="{y - 9}" width="12" height="10" fill="{color}"/>'
                       f'<text x="{_f(x + 16)}" y="{y}" fill="#374151">{escape(label)}</text>')
            x += 28 + 6.2 * len(label)
    out.append("</svg>")
    return "".join(out)
