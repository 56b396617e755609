"""`usagebot demo` end to end on the embedded default (SQLite, console, CRM dry run)."""

from __future__ import annotations

import json

from freezegun import freeze_time

from tests.bot.helpers import run_cli


@freeze_time("2026-11-24 09:30:00")
def test_demo_runs_whole_pipeline_and_its_csvs_backtest(tmp_path):
    data = tmp_path / "data"
    code, out, err = run_cli("demo", "--data-dir", str(data), "--accounts", "30", "--days", "75",
                             "--replay-days", "20")
    assert code == 0, err
    assert (data / "demo.db").exists()
    assert "30 synthetic accounts" in out
    assert "🔔" in out  # at least one alert rendered as it would appear in Slack
    assert "Summary:" in out and "CRM dry run" in out and "Usage_Health_Score__c" in out
    # the last replayed evaluation is at today's midnight (frozen clock), none after it
    assert "── 2026-11-25" not in out
    fired_line = next(ln for ln in out.splitlines() if ln.startswith("Summary:"))
    n_fired = int(fired_line.split()[1])
    assert n_fired > 0

    # The same data through the backtest command gives the same fired events for the replayed window.
    code, bt, err = run_cli("backtest", "--rules", "rules/examples/default.toml",
                            "--usage", str(data / "demo-usage.csv"), "--accounts", str(data / "demo-accounts.csv"),
                            "--from", "2026-11-04", "--to", "2026-11-24", "--format", "json")
    assert code == 0, err
    fired = [json.loads(x) for x in bt.splitlines() if json.loads(x)["event"] == "fired"]
    assert len(fired) == n_fired


@freeze_time("2026-11-24 09:30:00")
def test_demo_is_repeatable(tmp_path):
    a = run_cli("demo", "--data-dir", str(tmp_path / "a"), "--accounts", "15", "--days", "60",
                "--replay-days", "10")
    b = run_cli("demo", "--data-dir", str(tmp_path / "a"), "--accounts", "15", "--days", "60",
                "--replay-days", "10")
    strip = lambda s: s.replace(str(tmp_path), "")  # noqa: E731
    assert a[0] == b[0] == 0 and strip(a[1]) == strip(b[1])
