"""Outcome labels for `usagebot backtest --labels FILE`: what really happened, to score rules against.

    account,metric,start,end,kind
    acme,api_calls,2026-10-03,2026-10-06,drop

One row per real event: the account's metric had a `kind` event (spike, drop, inactivity,
expansion, ...) from `start` to `end` (ISO dates or date-times, UTC unless they say otherwise; end
exclusive). Every bad row is reported with its line and column; nothing is scored half-way.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

COLUMNS = ("account", "metric", "start", "end", "kind")


class LabelsError(Exception):
    """Problems in a labels file, one line per problem (file:line: column: message)."""


@dataclass(frozen=True)
class OutcomeLabel:
    account: str
    metric: str
    start: int
    end: int
    kind: str
    line: int = 0


def _time(text: str) -> int:
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def read_labels(path: str | Path) -> list[OutcomeLabel]:
    """The labels of a CSV file; LabelsError naming every bad row."""
    p = Path(path)
    problems: list[str] = []
    out: list[OutcomeLabel] = []
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"{p}: cannot read: {exc}") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise LabelsError(f"{p}:1: the header must have the columns {','.join(COLUMNS)} (missing: "
                          f"{', '.join(missing)})")
    reader.fieldnames = header
    for i, row in enumerate(reader, start=2):
        vals = {c: (row.get(c) or "").strip() for c in COLUMNS}
        bad = [c for c in ("account", "metric", "kind") if not vals[c]]
        for c in bad:
            problems.append(f"{p}:{i}: {c}: is empty")
        times: dict[str, int] = {}
        for c in ("start", "end"):
            try:
                times[c] = _time(vals[c])
            except ValueError:
                problems.append(f"{p}:{i}: {c}: {vals[c][:40]!r} is not an ISO date or time (e.g. 2026-10-03)")
        if len(times) == 2 and times["end"] <= times["start"]:
            problems.append(f"{p}:{i}: end: must be after start ({vals['end']} <= {vals['start']})")
        elif len(times) == 2 and not bad:
            out.append(OutcomeLabel(vals["account"], vals["metric"], times["start"], times["end"],
                                    vals["kind"].lower(), i))
    if problems:
        raise LabelsError("\n".join(problems[:50]) + (f"\n... and {len(problems) - 50} more" if len(problems) > 50
                                                      else ""))
    return out


def write_labels(path: str | Path, labels: list[OutcomeLabel]) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for lb in labels:
            w.writerow([lb.account, lb.metric, _iso(lb.start), _iso(lb.end), lb.kind])


def _iso(ts: int) -> str:
    d = datetime.fromtimestamp(ts, UTC)
    return d.strftime("%Y-%m-%d") if ts % 86_400 == 0 else d.strftime("%Y-%m-%dT%H:%M:%SZ")
