"""`usagebot backtest --report out.html`: one self-contained HTML file about a backtest.

It holds (inline CSS and SVG; no script, no link to anything outside the file):
- the per-rule summary (fired, notified, suppressed, resolved, open at the end, accounts, duration);
- alerts per day (stacked per rule);
- the accounts with the most alerts, each with the charts of the metrics that alerted (usage, each
  rule's usual level and threshold, the quota, the alerts);
- with `--labels FILE` (account,metric,start,end,kind): precision and recall per rule. A fired
  alert is true when a label of its rule's kind, account and metric is present when it fires
  (label start < fired at <= label end + the rule's detection delay: its bucket x (`for` + smooth),
  and for a growth expansion rule its period as well); a label counts for a rule of its kind and
  metric whose segment holds its account, and is found when such an alert is true for it;
- with `--compare OLD.toml`: the same backtest with the old rules, and what the change adds and
  removes side by side. Episodes match when they have the same rule, account, metric and
  discriminator and their times overlap.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup

from bot.backtest.labels import OutcomeLabel
from bot.backtest.run import BacktestResult, summary_rows
from integrations.charts.build import EpisodeMark, quota_chart, usage_chart
from integrations.charts.svg import render_bars, render_svg
from integrations.notice import AlertNotice
from rules.detectors.expansion import ExpansionParams
from rules.model import DAY, Rule, RuleSet

TOP_ACCOUNTS = 10
MAX_LISTED = 300


@dataclass(frozen=True)
class Episode:
    """A fired episode of the backtest: from its first anomalous bucket to its resolution (or the end)."""

    rule: str
    account: str
    metric: str
    discriminator: str
    started_at: int
    fired_at: int
    resolved_at: int | None
    severity: str
    notified: bool
    message: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.rule, self.account, self.metric, self.discriminator)

    def until(self, end: int) -> int:
        """Its end: the resolution, else the end of the backtest (after its start in any case)."""
        return max(self.resolved_at or end, self.started_at + 1)

    def overlaps(self, other: Episode, end: int) -> bool:
        return self.started_at < other.until(end) and other.started_at < self.until(end)


def episodes_of(result: BacktestResult) -> list[Episode]:
    """The fired episodes of a backtest, from its alert events (a fired event and its resolution)."""
    open_: dict[tuple[str, str, str, str], AlertNotice] = {}
    out: list[Episode] = []

    def close(ev: AlertNotice, resolved: int | None) -> None:
        out.append(Episode(ev.rule, ev.account, ev.metric, ev.discriminator, ev.started_at or ev.at, ev.at,
                           resolved, ev.severity, ev.notified, ev.message))

    for ev in result.events:
        key = (ev.rule, ev.account, ev.metric, ev.discriminator)
        if ev.event == "fired":
            if key in open_:
                close(open_.pop(key), None)
            open_[key] = ev
        elif ev.event == "resolved" and key in open_:
            close(open_.pop(key), ev.at)
    for ev in open_.values():
        close(ev, None)
    out.sort(key=lambda e: (e.fired_at, e.key))
    return out


# ---------------------------------------------------------------------- labels


def detection_delay(rule: Rule) -> int:
    """How long after a real event's end an alert about it may still fire (its detection delay)."""
    smooth = max(1, int(getattr(rule.params, "smooth", 1) or 1))
    delay = rule.bucket * (rule.for_buckets + smooth)
    if isinstance(rule.params, ExpansionParams) and rule.params.mode == "growth":
        delay += rule.params.period
    return delay


@dataclass
class RuleScore:
    rule: str
    kind: str
    metric: str
    alerts: int = 0
    true_alerts: int = 0
    labels: int = 0
    found: int = 0
    false_alerts: list[Episode] = field(default_factory=list)
    missed: list[OutcomeLabel] = field(default_factory=list)
    labelled: bool = True  # the labels file has labels of this rule's kind (else it is not scored)

    @property
    def precision(self) -> float | None:
        return self.true_alerts / self.alerts if self.alerts and self.labelled else None

    @property
    def recall(self) -> float | None:
        return self.found / self.labels if self.labels and self.labelled else None


def score_rules(result: BacktestResult, ruleset: RuleSet, labels: Sequence[OutcomeLabel]) -> list[RuleScore]:
    """Precision and recall of each rule against the labels (see the module docstring)."""
    episodes = episodes_of(result)
    by_key: dict[tuple[str, str, str], list[OutcomeLabel]] = defaultdict(list)
    for lb in labels:
        by_key[(lb.kind, lb.account, lb.metric)].append(lb)
    scores = []
    kinds = {lb.kind for lb in labels}
    for rule in ruleset.rules:
        sc = RuleScore(rule.id, rule.kind, rule.metric, labelled=rule.kind in kinds)
        if not sc.labelled:  # e.g. quota rules: exact arithmetic on the data, nothing to label
            sc.alerts = sum(1 for e in episodes if e.rule == rule.id)
            scores.append(sc)
            continue
        delay = detection_delay(rule)
        found: set[int] = set()
        for e in (e for e in episodes if e.rule == rule.id):
            sc.alerts += 1
            own = [lb for lb in by_key.get((rule.kind, e.account, e.metric), [])
                   if lb.start < e.fired_at <= lb.end + delay]
            if own:
                sc.true_alerts += 1
                found.update(id(lb) for lb in own)
            else:
                sc.false_alerts.append(e)
        for lb in labels:
            if lb.kind != rule.kind or lb.metric != rule.metric or lb.end <= result.start or lb.start >= result.end:
                continue
            facts = result.accounts.get(lb.account)
            if facts is not None and not rule.segment.matches(facts):
                continue
            sc.labels += 1
            if id(lb) in found:
                sc.found += 1
            else:
                sc.missed.append(lb)
        scores.append(sc)
    return scores


# --------------------------------------------------------------------- compare


@dataclass
class Comparison:
    added: list[Episode]  # only with the new rules
    removed: list[Episode]  # only with the old rules
    kept: int
    per_rule: list[tuple[str, int, int, int, int]]  # rule, old alerts, new alerts, added, removed


def compare(new: BacktestResult, old: BacktestResult) -> Comparison:
    new_eps, old_eps = episodes_of(new), episodes_of(old)
    end = max(new.end, old.end)
    olds: dict[tuple[str, str, str, str], list[Episode]] = defaultdict(list)
    for e in old_eps:
        olds[e.key].append(e)
    matched: set[int] = set()
    added: list[Episode] = []
    for e in new_eps:
        twin = next((o for o in olds.get(e.key, []) if id(o) not in matched and o.overlaps(e, end)), None)
        if twin is None:
            added.append(e)
        else:
            matched.add(id(twin))
    removed = [o for o in old_eps if id(o) not in matched]
    rules = sorted({e.rule for e in new_eps} | {e.rule for e in old_eps})
    n_old, n_new = Counter(e.rule for e in old_eps), Counter(e.rule for e in new_eps)
    n_add, n_rem = Counter(e.rule for e in added), Counter(e.rule for e in removed)
    per_rule = [(r, n_old[r], n_new[r], n_add[r], n_rem[r]) for r in rules]
    return Comparison(added, removed, len(matched), per_rule)


# ---------------------------------------------------------------------- charts


def per_day_chart(result: BacktestResult) -> str:
    start = (result.start // DAY) * DAY
    n = max(1, -(-(result.end - start) // DAY))
    counts: dict[str, list[float]] = defaultdict(lambda: [0.0] * n)
    for e in episodes_of(result):
        j = (e.fired_at - 1 - start) // DAY  # the day whose close fired it
        if 0 <= j < n:
            counts[e.rule][j] += 1
    series = [(rule, tuple(v)) for rule, v in sorted(counts.items())]
    return render_bars("Alerts fired per day", start, DAY, series)


def account_charts(result: BacktestResult, ruleset: RuleSet, account: str, episodes: Sequence[Episode]) -> list[str]:
    """The usage chart (and quota chart) of each metric the account alerted on."""
    rules = ruleset.by_id()
    out = []
    marks = [EpisodeMark(i, e.rule, e.metric, e.severity, "resolved" if e.resolved_at else "firing", e.started_at,
                         fired_at=e.fired_at, resolved_at=e.resolved_at) for i, e in enumerate(episodes, 1)]
    keys = sorted({(e.metric, rules[e.rule].bucket) for e in episodes if e.rule in rules})
    for metric, step in keys:
        block = result.blocks.get((metric, step))
        if block is None or account not in block.account_ids:
            continue
        row = block.values[block.account_ids.index(account)]
        metric_rules = [r for r in ruleset.rules if r.metric == metric]
        label = f"{metric} per {'day' if step == DAY else f'{step // 60} min'}"
        out.append(render_svg(usage_chart(metric, row, block.start, step, metric_rules, marks,
                                          show_from=result.start, title=label)))
        facts = result.accounts.get(account)
        if facts is not None and step == DAY:
            q = quota_chart(facts, metric, row, block.start, step, metric_rules, marks, show_from=result.start)
            if q is not None:
                out.append(render_svg(q))
    return out


# ---------------------------------------------------------------------- report


def _day(ts: int | None) -> str:
    return "—" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def write_report(path: str | Path, result: BacktestResult, ruleset: RuleSet, *, sources: Sequence[str] = (),
                 labels: Sequence[OutcomeLabel] | None = None, labels_file: str = "",
                 old: BacktestResult | None = None, old_ruleset: RuleSet | None = None, old_file: str = "") -> None:
    """Write the report (one HTML file, nothing else)."""
    from bot import __version__
    from bot.web.app import _environment

    episodes = episodes_of(result)
    per_account = Counter(e.account for e in episodes)
    top = []
    for account, n in per_account.most_common(TOP_ACCOUNTS):
        mine = [e for e in episodes if e.account == account]
        name = result.accounts[account].name if account in result.accounts else account
        top.append({"account": account, "name": name, "alerts": n, "episodes": mine,
                    "charts": [Markup(c) for c in account_charts(result, ruleset, account, mine)]})
    scores = score_rules(result, ruleset, labels) if labels is not None else None
    comparison = compare(result, old) if old is not None else None
    ctx = {
        "version": __version__, "result": result, "ruleset": ruleset, "sources": list(sources),
        "summary": summary_rows(result, ruleset), "per_day": Markup(per_day_chart(result)),
        "n_episodes": len(episodes), "notified": sum(1 for e in episodes if e.notified), "top": top,
        "scores": scores, "labels_file": labels_file, "n_labels": len(labels or []),
        "comparison": comparison, "old_file": old_file, "old_summary": summary_rows(old, old_ruleset)
        if old is not None and old_ruleset is not None else None,
        "old_per_day": Markup(per_day_chart(old)) if old is not None else None,
        "max_listed": MAX_LISTED, "day": _day, "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    html = _environment().get_template("report.html.j2").render(**ctx)
    Path(path).write_text(html, encoding="utf-8")


@dataclass
class ReportRequest:
    """--report / --labels / --compare of `usagebot backtest`, checked before the replay."""

    path: str
    labels: list[OutcomeLabel] | None
    labels_file: str
    old_rules: RuleSet | None
    old_paths: list[str]
    replay: Any  # run_backtest with the command's data options (for --compare)

    @classmethod
    def from_args(cls, args: Any, err: Any) -> ReportRequest | None:
        from bot.backtest.labels import LabelsError, read_labels
        from rules.loader import check_rules

        if not args.report:
            print("usagebot backtest: --labels and --compare need --report FILE.html", file=err)
            return None
        labels = None
        if args.labels:
            try:
                labels = read_labels(args.labels)
            except LabelsError as exc:
                print(str(exc), file=err)
                print("the labels file has problems; nothing was replayed.", file=err)
                return None
        old = None
        if args.compare:
            old, problems = check_rules(args.compare)
            for p in problems:
                print(str(p), file=err)
            if old is None:
                print(f"{len(problems)} problem(s) in the --compare rules; nothing was replayed.", file=err)
                return None
        parent = Path(args.report).resolve().parent
        if not parent.is_dir():
            print(f"usagebot backtest: --report {args.report}: no such folder {parent}", file=err)
            return None

        def replay(rs: RuleSet, start: int | None, end: int | None) -> BacktestResult:
            from bot.backtest.run import run_backtest

            return run_backtest(rs, args.usage, args.accounts, start, end, on_error=args.on_error,
                                first_run=args.first_run, show_progress=True)

        return cls(args.report, labels, args.labels or "", old, list(args.compare or []), replay)

    def write(self, result: BacktestResult, ruleset: RuleSet, start: int | None, end: int | None, err: Any) -> None:
        old = self.replay(self.old_rules, result.start, result.end) if self.old_rules is not None else None
        write_report(self.path, result, ruleset, sources=[], labels=self.labels, labels_file=self.labels_file,
                     old=old, old_ruleset=self.old_rules, old_file=", ".join(self.old_paths))
        print(f"report written to {self.path}", file=err)
