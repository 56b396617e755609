from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bot.helpers import SPIKE_RULES, day, run_cli, write_accounts, write_usage

REQUIRED = {"event", "at", "rule", "account", "metric", "severity", "value", "baseline", "threshold", "message"}


@pytest.fixture
def files(tmp_path: Path):
    rules = tmp_path / "rules.toml"
    rules.write_text(SPIKE_RULES)
    normal = [100.0 + (d % 3) for d in range(40)]
    spiky = list(normal)
    spiky[30] = 900.0  # one-day spike on day 30 (bucket [d30, d31))
    usage = write_usage(tmp_path / "usage.csv", 40, {"acme": spiky, "globex": normal})
    accounts = write_accounts(tmp_path / "accounts.csv", [
        {"id": "acme", "name": "Acme Corp", "owner_email": "ae@example.com", "plan": "growth",
         "crm_id": "001A", "quota.api_calls": "100000"},
        {"id": "globex", "name": "Globex", "owner_email": "", "plan": "starter", "crm_id": "",
         "quota.api_calls": "2500"},
    ])
    return rules, usage, accounts


def test_backtest_json_lines_fire_and_resolve(files):
    rules, usage, accounts = files
    code, out, err = run_cli("backtest", "--rules", str(rules), "--usage", str(usage), "--accounts",
                             str(accounts), "--format", "json")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events and all(REQUIRED <= set(e) for e in events)
    spikes = [e for e in events if e["rule"] == "calls-spike"]
    assert [(e["event"], e["at"], e["account"]) for e in spikes] == [
        ("fired", day(31), "acme"),  # evaluated when the day-30 bucket closed
        ("resolved", day(34), "acme"),  # after 3 quiet days in a row (a spike's resolve_after default)
    ]
    fired = spikes[0]
    assert fired["value"] == 900.0 and fired["baseline"] == pytest.approx(101.0)
    assert fired["threshold"] == pytest.approx(303.0) and fired["severity"] == "warning"
    assert "900" in fired["message"]
    # Globex (quota 2,500): 80% and 100% fire once each in September, when the bucket that
    # crosses them closes; October's usage stays below 80%, and nothing fires for Acme.
    normal = [100.0 + (d % 3) for d in range(40)]
    crossing = {f: next(n for n in range(1, 31) if sum(normal[:n]) >= f * 2500) for f in (0.8, 1.0)}
    quota = [(e["event"], e["account"], e["threshold"], e["at"]) for e in events if e["rule"] == "calls-quota"]
    assert quota == [
        ("fired", "globex", 2000.0, day(crossing[0.8])),
        ("fired", "globex", 2500.0, day(crossing[1.0])),
        ("resolved", "globex", 2000.0, day(31)),  # first evaluation inside the October period
        ("resolved", "globex", 2500.0, day(31)),
    ]


def test_backtest_is_causal_prefix_of_longer_run(files):
    """No look-ahead: cutting the replay at --to never changes events before the cut."""
    rules, usage, accounts = files
    _, full, _ = run_cli("backtest", "--rules", str(rules), "--usage", str(usage), "--accounts",
                         str(accounts), "--format", "json")
    _, cut, _ = run_cli("backtest", "--rules", str(rules), "--usage", str(usage), "--accounts",
                        str(accounts), "--format", "json", "--to", day(31))
    full_ev = [json.loads(x) for x in full.splitlines()]
    cut_ev = [json.loads(x) for x in cut.splitlines()]
    assert cut_ev == [e for e in full_ev if e["at"] <= day(31)]
    assert any(e["event"] == "fired" and e["rule"] == "calls-spike" for e in cut_ev)


def test_backtest_from_limits_events(files):
    rules, usage, accounts = files
    _, out, _ = run_cli("backtest", "--rules", str(rules), "--usage", str(usage), "--accounts",
                        str(accounts), "--format", "json", "--from", "2026-10-01")
    assert all(json.loads(x)["at"] > "2026-10-01" for x in out.splitlines())


def test_backtest_table_ends_with_per_rule_summary(files):
    rules, usage, accounts = files
    code, out, _ = run_cli("backtest", "--rules", str(rules), "--usage", str(usage), "--accounts",
                           str(accounts))
    assert code == 0
    lines = out.rstrip().splitlines()
    idx = lines.index("Summary per rule")
    assert lines[idx + 1].split()[:4] == ["RULE", "KIND", "FIRED", "NOTIFIED"]
    rows = {ln.split()[0]: ln.split() for ln in lines[idx + 3:]}
    assert set(rows) == {"calls-spike", "calls-quota"}
    assert rows["calls-spike"][2] == "1" and rows["calls-spike"][5] == "1"  # fired 1, resolved 1
    assert any("acme" in ln and "fired" in ln for ln in lines[:idx])


def test_backtest_bad_rows_reject_by_default_and_skip_with_rejects_file(files, tmp_path):
    rules, usage, accounts = files
    text = usage.read_text().splitlines()
    text.insert(3, "2026-09-01T00:00:00Z,acme,api_calls,-5")
    text.insert(5, "not-a-time,acme,api_calls,1")
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(text) + "\n")
    code, out, err = run_cli("backtest", "--rules", str(rules), "--usage", str(bad))
    assert code == 1 and out == ""
    assert f"{bad}:4:" in err and f"{bad}:6:" in err and "nothing was replayed" in err
    rejects = tmp_path / "rejects.csv"
    code, out, err = run_cli("backtest", "--rules", str(rules), "--usage", str(bad), "--on-error", "skip",
                             "--rejects", str(rejects), "--format", "json")
    assert code == 0 and "2 bad row(s) skipped" in err
    kept = rejects.read_text()
    assert "-5" in kept and "not-a-time" in kept and "_error" in kept.splitlines()[0]


def test_backtest_usage_errors(files, tmp_path):
    rules, usage, _ = files
    code, _, err = run_cli("backtest", "--rules", str(tmp_path / "nope.toml"), "--usage", str(usage))
    assert code == 2 and "nope.toml" in err
    code, _, err = run_cli("backtest", "--rules", str(rules), "--usage", str(usage), "--from", "yesterday")
    assert code == 2 and "--from" in err
    broken = tmp_path / "broken.toml"
    broken.write_text('[[rule]]\nid = "x"\nkind = "spike"\n')
    code, _, err = run_cli("backtest", "--rules", str(broken), "--usage", str(usage))
    assert code == 1 and "broken.toml" in err and "metric" in err


def test_check_command(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(SPIKE_RULES)
    code, out, _ = run_cli("check", str(good))
    assert code == 0 and out.startswith("OK: 2 rules in 1 file(s)")
    bad = tmp_path / "bad.toml"
    bad.write_text(SPIKE_RULES.replace("ratio = 3.0", "ratio = 0.5").replace('bucket = "1d"\nseverity = "info"',
                                                                              'bucket = "7m"\nseverity = "loud"'))
    code, out, _ = run_cli("check", str(bad))
    assert code == 1
    problems = [ln for ln in out.splitlines() if ln.startswith(str(bad))]
    assert len(problems) >= 3
    assert any("calls-spike" in p and "threshold.ratio" in p for p in problems)
    assert any("calls-quota" in p and "bucket" in p for p in problems)
    assert any("calls-quota" in p and "severity" in p for p in problems)
    assert all(p.split(":")[1].isdigit() for p in problems)  # file:line
    code, _, err = run_cli("check", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml" in err


def test_shipped_rules_check_clean():
    code, out, _ = run_cli("check", "rules/examples/default.toml")
    assert code == 0, out


def test_backtest_of_rows_whose_bucket_total_overflows_is_a_clear_error(files, tmp_path):
    rules, _, _ = files
    big = tmp_path / "big.csv"
    big.write_text("timestamp,account,metric,value\n2026-09-01T00:00:05Z,acme,api_calls,1e308\n"
                   "2026-09-01T00:00:10Z,acme,api_calls,1e308\n")
    code, out, err = run_cli("backtest", "--rules", str(rules), "--usage", str(big))
    assert code == 1 and "Traceback" not in err
    assert f"usagebot backtest: {big}: usage records: account 'acme', metric 'api_calls', bucket" in err


def test_backtest_says_which_accounts_it_could_not_judge_when_their_sums_overflow(tmp_path: Path) -> None:
    """Finite values whose month adds up past a float64 (1e308 on two days): the quota rule cannot judge
    acme, as in the service's cycle (contained to that account, logged there). The backtest says so
    once per (rule, account) with when and how often, judges globex as usual, and no numpy
    RuntimeWarning reaches the terminal (the scans overflow on the same values)."""
    rules = tmp_path / "rules.toml"
    rules.write_text(SPIKE_RULES)
    huge = [100.0] * 40
    huge[20] = huge[21] = 1e308
    usage = write_usage(tmp_path / "usage.csv", 40, {"acme": huge, "globex": [100.0] * 40})
    accounts = write_accounts(tmp_path / "accounts.csv", [
        {"id": a, "name": a, "owner_email": "", "plan": "", "crm_id": "", "quota.api_calls": "2500"}
        for a in ("acme", "globex")])
    code, out, err = run_cli("backtest", "--rules", str(rules), "--usage", str(usage), "--accounts", str(accounts),
                             "--format", "json")
    assert code == 0 and "Traceback" not in err and "RuntimeWarning" not in err, err
    lines = [line for line in err.splitlines() if "not evaluated" in line]
    assert lines == [f"warning: account 'acme' not evaluated by rule 'calls-quota' at 9 evaluation(s) ({day(22)} to"
                     f" {day(30)}): the rule's computation on its usage overflowed (not a finite number); fix or"
                     " re-load its usage"]
    events = [json.loads(line) for line in out.splitlines()]
    quota = {(e["account"], e["at"]) for e in events if e["rule"] == "calls-quota"}
    assert {a for a, at in quota if at <= day(21)} == {"acme", "globex"}  # 2,000 of 2,500 by day 20: both
    assert {a for a, at in quota if day(22) <= at <= day(30)} <= {"globex"}  # acme not judged there


def test_check_against_the_data_warns_and_backtest_says_the_same(tmp_path: Path, files) -> None:
    """`usagebot check RULES --usage --accounts` (and --db) warns about rules that cannot fire on the
    data; the backtest prints the same warnings (seen: idle rules and a silent backtest)."""
    rules, usage, accounts = files
    extra = tmp_path / "extra.toml"
    extra.write_text('[[rule]]\nid = "seats-spike"\nkind = "spike"\nmetric = "seats"\n'
                     '[[rule]]\nid = "exports-quota"\nkind = "quota"\nmetric = "exports"\n')
    code, out, _ = run_cli("check", str(rules), str(extra), "--usage", str(usage), "--accounts", str(accounts))
    assert code == 0
    assert "warning: rule 'seats-spike': metric: usage.csv + accounts.csv has no data for metric 'seats'" in out
    assert "warning: rule 'exports-quota': metric: no account in usage.csv + accounts.csv has a quota" in out
    assert "3 warning(s)" in out  # exports: neither data nor quotas
    assert run_cli("check", str(rules), str(extra), "--usage", str(usage), "--strict")[0] == 1
    code, _, err = run_cli("backtest", "--rules", str(rules), "--rules", str(extra), "--usage", str(usage))
    assert code == 0 and "has no data for metric 'seats'" in err
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert run_cli("ingest", "--db", db, "--usage", str(usage), "--accounts", str(accounts))[0] == 0
    code, out, _ = run_cli("check", str(rules), str(extra), "--db", db)
    assert code == 0 and "the database (sqlite:///" in out and "has no data for metric 'seats'" in out
    code, _, err = run_cli("check", str(rules), "--db", f"sqlite:///{tmp_path / 'typo.sqlite'}")
    assert code == 2 and "no such database file" in err and not (tmp_path / "typo.sqlite").exists()


def test_backtest_streams_events_in_time_order_while_it_replays(tmp_path, monkeypatch):
    """on_event (what --format json prints) gets each event as the replay reaches it, in time order,
    the same events a run that keeps them returns; none are kept in the result."""
    import bot.backtest.run as backtest_run
    from bot.cli.demo import write_book_csv
    from integrations.sources.demo import generate_book
    from rules.loader import load_rules

    book = generate_book(n_accounts=12, days=70, seed=5)
    usage_csv, accounts_csv = tmp_path / "u.csv", tmp_path / "a.csv"
    write_book_csv(book, usage_csv, accounts_csv)
    ruleset = load_rules([Path(__file__).resolve().parents[3] / "rules" / "examples" / "default.toml"])
    kept = backtest_run.run_backtest(ruleset, usage_csv, accounts_csv)

    steps = {"done": 0}
    emitted_after: list[int] = []  # steps finished when each event came
    real_replay = backtest_run.replay

    def counting(*args, **kwargs):
        for step in real_replay(*args, **kwargs):
            yield step
            steps["done"] += 1

    def on_event(ev):
        emitted_after.append(steps["done"])
        streamed.append(ev)

    streamed: list = []
    monkeypatch.setattr(backtest_run, "replay", counting)
    result = backtest_run.run_backtest(ruleset, usage_csv, accounts_csv, on_event=on_event)
    assert streamed == kept.events and result.events == [] and len(streamed) > 10
    assert [e.at for e in streamed] == sorted(e.at for e in streamed)
    # each event came out during its own step (daily rules: the step of `at` is day (at - start) / 1d)
    days = [(e.at - result.start) // 86_400 for e in streamed]
    assert emitted_after == [d - 1 for d in days] and emitted_after[0] < steps["done"] - 5
    assert result.open_at_end == kept.open_at_end and result.first_run_held == kept.first_run_held


def test_backtest_reads_pricing_from_the_config_as_the_service_does(files, tmp_path: Path) -> None:
    """Issue 17 note: the backtest did not read [pricing]. An account renewing within renewal_within
    gets its alert's severity raised (the service's defaults without a config), and the config's
    [pricing] is the one applied, with the money it prices."""
    rules, usage, _ = files
    accounts = write_accounts(tmp_path / "renewing.csv", [
        {"id": "acme", "name": "Acme Corp", "owner_email": "ae@example.com", "plan": "growth", "crm_id": "001A",
         "arr": "48000", "renewal_date": "2026-10-20"},
        {"id": "globex", "name": "Globex", "plan": "starter", "quota.api_calls": "2500"}])

    def spike(*extra: str) -> dict:
        code, out, err = run_cli("backtest", "--rules", str(rules), "--usage", str(usage), "--accounts",
                                 str(accounts), "--format", "json", *extra)
        assert code == 0, err
        return next(e for e in map(json.loads, out.splitlines()) if e["rule"] == "calls-spike")

    default = spike()
    assert (default["severity"], default["renewal_days"]) == ("critical", 18)  # fired 2026-10-02, renews 10-20
    config = tmp_path / "usagebot.toml"
    config.write_text(f'[rules]\npaths = ["{rules}"]\n[pricing]\ncurrency = "€"\nrenewal_within = "10d"\n')
    priced = spike("--config", str(config))
    assert (priced["severity"], priced["renewal_days"], priced["currency"]) == ("warning", None, "€")
