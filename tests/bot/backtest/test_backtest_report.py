"""`usagebot backtest --report`: one self-contained HTML file; --labels precision/recall; --compare."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from bot.backtest.labels import OutcomeLabel, read_labels
from bot.backtest.report import compare, episodes_of, score_rules
from bot.backtest.run import BacktestResult
from bot.cli.demo import SHIPPED_RULES, write_book_csv
from bot.cli.main import main
from integrations.notice import AlertNotice
from integrations.sources.demo import generate_book
from rules.loader import load_rules, load_rules_text
from rules.model import DAY

T = 1_790_000_000 // DAY * DAY


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bt-report")
    write_book_csv(generate_book(n_accounts=40, days=110, seed=5), d / "u.csv", d / "a.csv", d / "labels.csv")
    old = SHIPPED_RULES.read_text().replace("ratio = 0.5             # value <= 0.5 x baseline",
                                            "ratio = 0.7             # value <= 0.7 x baseline")
    assert old != SHIPPED_RULES.read_text()
    (d / "old.toml").write_text(old)
    return d


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(["backtest", *args], out=out, err=err), out.getvalue(), err.getvalue()


def test_the_report_is_one_self_contained_file_with_summary_days_accounts_scores_and_comparison(book: Path) -> None:
    report = book / "report.html"
    code, out, err = _run("--rules", str(SHIPPED_RULES), "--usage", str(book / "u.csv"), "--accounts",
                          str(book / "a.csv"), "--report", str(report), "--labels", str(book / "labels.csv"),
                          "--compare", str(book / "old.toml"))
    assert code == 0, err
    assert "report written to" in err and "Summary per rule" in out  # the table is printed as before
    html = report.read_text()
    for outside in ("<script", "<link", "src=", "@import", "url(", 'href="http', "<iframe", "<img"):
        assert outside not in html, outside
    rules = load_rules([str(SHIPPED_RULES)]).rules
    for r in rules:
        assert f'<tr data-rule="{r.id}">' in html, r.id
    assert "Alerts fired per day" in html and 'class="bar"' in html
    sections = re.findall(r'<section class="account" data-account="([^"]+)">', html)
    assert 1 <= len(sections) <= 10
    first = html[html.index('<section class="account"'):]
    assert "<svg" in first and 'class="zero-axis"' in first and "marker-fired" in first
    assert "Precision and recall against" in html and re.search(r'class="num recall">\d+%', html)
    assert "no quota labels" in html  # quota rules are arithmetic: not scored against labels
    assert "Rule change:" in html and "Removed:" in html and "Added:" in html
    before = re.search(r'<tr data-rule="api-calls-drop"><td><code>api-calls-drop</code></td>'
                       r'<td class="num">(\d+)</td><td class="num">(\d+)</td>', html)
    assert before and int(before.group(1)) >= int(before.group(2))  # 0.7 fires at least as often as 0.5


def test_labels_and_compare_need_report_and_bad_labels_name_their_rows(book: Path, tmp_path: Path) -> None:
    base = ["--rules", str(SHIPPED_RULES), "--usage", str(book / "u.csv")]
    code, _, err = _run(*base, "--labels", str(book / "labels.csv"))
    assert code == 2 and "need --report" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("account,metric,start,end,kind\nacme,api_calls,2026-10-01,2026-09-01,drop\n"
                   ",api_calls,yesterday,2026-10-02,spike\n")
    out = tmp_path / "r.html"
    code, _, err = _run(*base, "--report", str(out), "--labels", str(bad))
    assert code == 1 and not out.exists()
    assert f"{bad}:2: end: must be after start" in err and f"{bad}:3: account: is empty" in err
    assert f"{bad}:3: start: 'yesterday' is not an ISO date" in err
    (tmp_path / "h.csv").write_text("acct,metric\n")
    with pytest.raises(Exception, match="missing: account, start, end, kind"):
        read_labels(tmp_path / "h.csv")


def _ev(event: str, rule: str, account: str, at: int, started: int | None = None) -> AlertNotice:
    return AlertNotice(event=event, rule=rule, account=account, metric="calls", at=at,
                       started_at=started if started is not None else at, severity="warning")


RULES = """
[[rule]]
id = "s"
kind = "spike"
metric = "calls"
bucket = "1d"
[rule.threshold]
ratio = 2.0
"""


def test_precision_and_recall_count_true_false_and_missed() -> None:
    rs = load_rules_text(RULES, "r.toml")
    result = BacktestResult(events=[
        _ev("fired", "s", "a", T + 5 * DAY), _ev("resolved", "s", "a", T + 8 * DAY),
        _ev("fired", "s", "b", T + 20 * DAY),  # nothing happened there: false
        _ev("fired", "s", "c", T + 13 * DAY),  # a label that ended 2 days before: within the delay (1d x (1+1))
    ], start=T, end=T + 30 * DAY)
    labels = [OutcomeLabel("a", "calls", T + 4 * DAY, T + 6 * DAY, "spike"),
              OutcomeLabel("c", "calls", T + 9 * DAY, T + 11 * DAY, "spike"),
              OutcomeLabel("d", "calls", T + 2 * DAY, T + 3 * DAY, "spike"),  # missed
              OutcomeLabel("a", "calls", T + 4 * DAY, T + 6 * DAY, "drop")]  # another kind: not this rule's
    (sc,) = score_rules(result, rs, labels)
    assert (sc.alerts, sc.true_alerts, sc.labels, sc.found) == (3, 2, 3, 2)
    assert sc.precision == pytest.approx(2 / 3) and sc.recall == pytest.approx(2 / 3)
    assert [e.account for e in sc.false_alerts] == ["b"] and [lb.account for lb in sc.missed] == ["d"]


def test_compare_matches_overlapping_episodes_and_lists_the_rest() -> None:
    old = BacktestResult(events=[_ev("fired", "s", "a", T + 5 * DAY, T + 4 * DAY), _ev("resolved", "s", "a", T + 9 * DAY),
                                 _ev("fired", "s", "b", T + 20 * DAY)], start=T, end=T + 30 * DAY)
    new = BacktestResult(events=[_ev("fired", "s", "a", T + 6 * DAY, T + 4 * DAY),  # same event, a day later
                                 _ev("fired", "s", "c", T + 25 * DAY)], start=T, end=T + 30 * DAY)
    c = compare(new, old)
    assert c.kept == 1 and [e.account for e in c.added] == ["c"] and [e.account for e in c.removed] == ["b"]
    assert c.per_rule == [("s", 2, 2, 1, 1)]
    assert [e.resolved_at for e in episodes_of(old)] == [T + 9 * DAY, None]
