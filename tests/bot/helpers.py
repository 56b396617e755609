"""Small builders shared by the bot/ tests."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.cli.main import main

T0 = datetime(2026, 9, 1, tzinfo=UTC)

SPIKE_RULES = """
[[rule]]
id = "calls-spike"
kind = "spike"
metric = "api_calls"
bucket = "1d"
severity = "warning"
cooldown = "0"
[rule.baseline]
window = "14d"
method = "median"
min_points = 7
[rule.threshold]
ratio = 3.0
[rule.guards]
min_baseline = 10

[[rule]]
id = "calls-quota"
kind = "quota"
metric = "api_calls"
bucket = "1d"
severity = "info"
[rule.threshold]
mode = "threshold"
fractions = [0.8, 1.0]
"""


def write_usage(path: Path, days: int, daily: dict[str, list[float | None]] | None = None,
                metric: str = "api_calls") -> Path:
    """Daily rows from T0; daily[account][d] = value (None = no row)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "account", "metric", "value"])
        for d in range(days):
            ts = (T0 + timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ")
            for acct, vals in (daily or {}).items():
                v = vals[d]
                if v is not None:
                    w.writerow([ts, acct, metric, f"{v:g}"])
    return path


def write_accounts(path: Path, rows: list[dict[str, str]]) -> Path:
    cols = ["id", "name", "owner_email", "plan", "crm_id"]
    extra = sorted({k for r in rows for k in r if k not in cols})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols + extra)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols + extra})
    return path


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def day(d: int) -> str:
    return (T0 + timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ")
