"""Precision and recall of rules against the labelled synthetic book.

    python -m bench.quality [--rules rules/examples/default.toml] [--seeds 1 2 3]
                            [--accounts 200] [--days 120]

The demo generator injects anomalies with exact ground truth (integrations.
sources.demo.Label). Each seed's book is replayed day by day with the same
replay the backtest uses (no look-ahead) and every *fired* episode of a
spike/drop/inactivity/expansion rule is matched to the labels:

- a fired alert is a true positive when a label of the same kind, account and
  metric is present at the time (label.start < at <= label.end + grace, where
  grace allows for `for`, smoothing and the growth detector's lag);
- a label counts towards recall only if some rule of its kind watches its
  metric and its account is in that rule's segment; it is found when at least
  one alert matched it.

Precision is reported twice: strict (the label is of the alert's own kind)
and "explained" (some labelled anomaly of the account and metric is present,
e.g. a spike alert during a labelled steep expansion). Quota rules and
expansion rules in utilization mode are exact arithmetic on the data (tested
directly; the generator does not label them), so they are reported as counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from integrations.sources.demo import DemoBook, Label, generate_book
from rules.engine import history_needed
from rules.loader import load_rules
from rules.model import DAY, Rule, RuleSet
from rules.replay import replay

LABELLED_KINDS = ("spike", "drop", "inactivity", "expansion")
GRACE = {"spike": 1 * DAY, "drop": 3 * DAY, "inactivity": 1 * DAY, "expansion": 14 * DAY}
SHIPPED = Path(__file__).resolve().parent.parent / "rules" / "examples" / "default.toml"
WARMUP_DAYS = 35


@dataclass
class KindScore:
    alerts: int = 0
    true_alerts: int = 0
    explained_alerts: int = 0
    labels: int = 0
    found: int = 0
    false_alerts: list[dict] = field(default_factory=list)
    missed: list[Label] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        return self.true_alerts / self.alerts if self.alerts else None

    @property
    def explained_precision(self) -> float | None:
        return self.explained_alerts / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        return self.found / self.labels if self.labels else None


def _covered(label: Label, rules: Sequence[Rule], book: DemoBook) -> bool:
    acct = next(a for a in book.accounts if a.id == label.account)
    return any(r.kind == label.kind and r.metric == label.metric and r.segment.matches(acct) for r in rules)


def score_book(ruleset: RuleSet, book: DemoBook, scores: dict[str, KindScore], quota_counts: dict[str, int]) -> None:
    rules = list(ruleset.rules)
    blocks = {(m, s): book.block(m) for (m, s) in history_needed(rules) if s == book.step}
    if len(blocks) != len(history_needed(rules)):
        raise SystemExit("quality measurement needs rules with the book's bucket size (1d)")
    accounts = {a.id: a for a in book.accounts}
    start = book.start + WARMUP_DAYS * DAY
    labels = [lb for lb in book.labels if lb.start >= start]
    by_key: dict[tuple[str, str, str], list[Label]] = defaultdict(list)
    any_label: dict[tuple[str, str], list[Label]] = defaultdict(list)
    for lb in book.labels:
        by_key[(lb.kind, lb.account, lb.metric)].append(lb)
        any_label[(lb.account, lb.metric)].append(lb)
    found: set[int] = set()
    kinds = {r.id: r.kind for r in rules}
    exact = {r.id for r in rules if r.kind == "quota" or (r.kind == "expansion" and
                                                          getattr(r.params, "mode", "") == "utilization")}
    for step in replay(rules, blocks, accounts, start, book.end):
        for t in step.transitions:
            if t.event != "fired":
                continue
            kind = kinds[t.state.rule_id]
            if t.state.rule_id in exact:
                quota_counts[t.state.rule_id] += 1
                continue
            if kind not in LABELLED_KINDS:
                continue
            sc = scores[kind]
            sc.alerts += 1
            match = [lb for lb in by_key.get((kind, t.state.account_id, t.state.metric), [])
                     if lb.start < t.at <= lb.end + GRACE[kind]]
            if match:
                sc.true_alerts += 1
                found.update(id(lb) for lb in match)
            if match or any(lb.start < t.at <= lb.end + GRACE[lb.kind]
                            for lb in any_label.get((t.state.account_id, t.state.metric), [])):
                sc.explained_alerts += 1
            if not match:
                sc.false_alerts.append({"rule": t.state.rule_id, "account": t.state.account_id,
                                        "metric": t.state.metric, "at": t.at})
    labelled_rules = [r for r in rules if r.id not in exact]
    for lb in labels:
        if lb.kind in LABELLED_KINDS and _covered(lb, labelled_rules, book):
            sc = scores[lb.kind]
            sc.labels += 1
            if id(lb) in found:
                sc.found += 1
            else:
                sc.missed.append(lb)


def measure(ruleset: RuleSet, seeds: Sequence[int] = (1, 2, 3), n_accounts: int = 200,
            days: int = 120) -> tuple[dict[str, KindScore], dict[str, int]]:
    scores: dict[str, KindScore] = defaultdict(KindScore)
    quota_counts: dict[str, int] = defaultdict(int)
    for seed in seeds:
        book = generate_book(n_accounts=n_accounts, days=days, seed=seed)
        score_book(ruleset, book, scores, quota_counts)
    return dict(scores), dict(quota_counts)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", action="append")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--accounts", type=int, default=200)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--json", action="store_true")
    p.add_argument("--show-errors", action="store_true", help="list false alerts and missed labels")
    args = p.parse_args(argv)
    ruleset = load_rules(args.rules or [SHIPPED])
    scores, quota = measure(ruleset, args.seeds, args.accounts, args.days)
    if args.json:
        print(json.dumps({k: {"alerts": s.alerts, "true_alerts": s.true_alerts, "labels": s.labels,
                              "found": s.found, "precision": s.precision,
                              "explained_precision": s.explained_precision, "recall": s.recall}
                          for k, s in scores.items()}, indent=2))
        return 0
    print(f"{len(args.seeds)} books x {args.accounts} accounts x {args.days} days "
          f"(first {WARMUP_DAYS} days are warm-up)")
    print(f"{'kind':<11} {'alerts':>6} {'true':>5} {'precision':>9} {'explained':>9} {'labels':>6} "
          f"{'found':>5} {'recall':>7}")
    for kind in LABELLED_KINDS:
        s = scores.get(kind, KindScore())
        print(f"{kind:<11} {s.alerts:>6} {s.true_alerts:>5} {_pct(s.precision):>9} "
              f"{_pct(s.explained_precision):>9} {s.labels:>6} {s.found:>5} {_pct(s.recall):>7}")
    for rule_id, n in sorted(quota.items()):
        print(f"exact-arithmetic rule {rule_id}: {n} fired")
    if args.show_errors:
        for kind, s in scores.items():
            for fa in s.false_alerts:
                print(f"false {kind}: {fa}", file=sys.stderr)
            for lb in s.missed:
                print(f"missed {kind}: {lb}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
