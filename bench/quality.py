"""How true the shipped rules are on labelled synthetic books: recall, precision, flaps, false
recoveries, volume.

    python -m bench.quality [--rules rules/examples/default.toml] [--seeds 1 2 3 | --fresh 3]
                            [--accounts 400] [--days 200] [--holidays 2] [--gaps 1] [--json]

The demo generator injects anomalies with exact ground truth (integrations.sources.demo.Label):
spikes, drops and stops (inactivity), some lasting to the end of the book, expansions, tiny
accounts, a data outage, and here also book-wide holidays (every account at 15-25% of normal)
and pipeline gaps (no data for anyone). Each book is replayed day by day exactly as the service
evaluates it (rules.replay: no look-ahead, the rule files' [[inhibit]] and [calendar], the
shipped first-run policy), and every episode is matched to the labels:

- a fired episode is a true alert when a label of its own kind, account and metric is present
  at the time (label.start < at <= label.end + grace: `for`, smoothing and the growth detector
  lag); "explained" when a label of a kind that explains it is (EXPLAINS: a drop alert during a
  stop, a spike alert during a steep expansion);
- a label counts towards recall when some rule of its kind watches its metric and its account
  is in that rule's segment; it is found when an episode of its kind fired for it;
- a **false recovery** is a resolution while the labelled condition the episode tracks is still
  present (label.start < at <= label.end; PERSISTS: a drop alert tracks drops and stops); a
  **flap** is a re-fire of the same key after a resolution, while the same label persists (a
  spike alert during an expansion tracks one jump: a second one in the same expansion is
  reported separately);
- **cohort alerts**: notified alerts about a holiday bucket that no label explains (target 0);
- **notifications per account-month**: what people receive (fired, renotified and resolved
  notifications; quiet closes and first-run holds excluded), and the first cycle's share;
- quota forecasts are checked against the data itself: precision = fired forecasts whose
  account really reached the target by the period end.

--fresh N draws N new seeds (printed) instead of fixed ones: the generator is not tuned to a book.

The anomaly kind is shown beside spike and drop (`anomaly_vs_spike_drop`): the shipped preset
(rules/examples/anomaly.toml with bucket "1d", one rule per metric of the book, direction both) is
replayed the same way; an anomaly alert is true when a spike, drop or stop label of its account and
metric is present (with that label kind's grace), explained by an expansion, a holiday alarm when it
is about a book-wide holiday bucket (or the day after; a [calendar] mutes those), else a false alarm.
Recall is per label kind (spike labels; drop and stop labels), over every labelled metric; the
spike and drop rows are the shipped rules' own (their false alarms: alerts no label explains).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from integrations.sources.demo import DemoBook, Label, generate_book
from rules.detectors.quota import QuotaParams
from rules.engine import history_needed
from rules.lifecycle import Transition
from rules.loader import load_rules, load_rules_text
from rules.model import DAY, Rule, RuleSet
from rules.periods import billing_period
from rules.replay import replay

LABELLED_KINDS = ("spike", "drop", "inactivity", "expansion")
GRACE = {"spike": 1 * DAY, "drop": 3 * DAY, "inactivity": 1 * DAY, "expansion": 14 * DAY}
# Which labels explain an alert of a kind: a drop alert during a stop is about a real fall, a
# spike alert during a steep expansion about real growth.
EXPLAINS = {"spike": ("spike", "expansion"), "drop": ("drop", "inactivity"), "inactivity": ("inactivity",),
            "expansion": ("expansion",)}
# Which labels are the condition an episode of a kind tracks while it lasts (flaps, false recoveries):
# a stop is a drop that persists; a spike alert during an expansion is about one jump, not the
# whole growth (two spikes 10 days apart in one expansion are two spikes: counted in `growth_realerts`).
PERSISTS = {"spike": ("spike",), "drop": ("drop", "inactivity"), "inactivity": ("inactivity",),
            "expansion": ("expansion",)}
HOLIDAY_KINDS = ("spike", "drop", "inactivity")  # what a book-wide quiet day can trigger (quota sums cannot)
SHIPPED = Path(__file__).resolve().parent.parent / "rules" / "examples" / "default.toml"
ANOMALY_PRESET = SHIPPED.parent / "anomaly.toml"
ANOMALY_LABELS = {"spike": ("spike",), "drop": ("drop", "inactivity")}  # recall rows: label kinds found
WARMUP_DAYS = 35
DEFAULTS = {"seeds": (1, 2, 3), "accounts": 400, "days": 200, "holidays": 2, "gaps": 1}


@dataclass
class KindScore:
    alerts: int = 0  # fired episodes
    notified: int = 0  # of those, sent to people
    true_alerts: int = 0
    explained_alerts: int = 0
    labels: int = 0
    found: int = 0
    resolutions: int = 0
    flaps: int = 0
    false_recoveries: int = 0
    growth_realerts: int = 0  # spike: a re-fire of the key during the same labelled expansion
    # labels that ended inside the book, tracked by an episode: days from the label's end to the resolution
    # (None: still open at the book's end) — a rule that never resolves has no false recoveries either
    resolution_delays: list[float | None] = field(default_factory=list)
    false_alerts: list[dict] = field(default_factory=list)
    missed: list[Label] = field(default_factory=list)
    flap_cases: list[dict] = field(default_factory=list)
    false_recovery_cases: list[dict] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        return self.true_alerts / self.alerts if self.alerts else None

    @property
    def explained_precision(self) -> float | None:
        return self.explained_alerts / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        return self.found / self.labels if self.labels else None


@dataclass
class Volume:
    account_months: float = 0.0
    notifications: int = 0  # to people: fired + renotified + resolved, notified
    alerts: int = 0  # fired and notified
    first_cycle_notifications: int = 0  # on the first evaluation (the first-run policy holds them)
    first_run_held: int = 0
    cohort_events: int = 0
    cohort_alerts: int = 0  # notified alerts about a holiday bucket that no label explains
    cohort_cases: list[dict] = field(default_factory=list)
    forecasts: int = 0
    forecasts_true: int = 0
    forecast_resolved_then_reached: int = 0

    @property
    def per_account_month(self) -> float | None:
        return self.notifications / self.account_months if self.account_months else None


def _covered(label: Label, rules: Sequence[Rule], book: DemoBook) -> bool:
    acct = next(a for a in book.accounts if a.id == label.account)
    return any(r.kind == label.kind and r.metric == label.metric and r.segment.matches(acct) for r in rules)


def _present(lb: Label, at: int, grace: int = 0) -> bool:
    return lb.start < at <= lb.end + grace


def score_book(ruleset: RuleSet, book: DemoBook, scores: dict[str, KindScore], volume: Volume) -> None:
    rules = list(ruleset.rules)
    needs = history_needed(rules)
    blocks = {(m, s): book.block(m) for (m, s) in needs if s == book.step}
    if len(blocks) != len(needs):
        raise SystemExit("quality measurement needs rules with the book's bucket size (1d)")
    accounts = {a.id: a for a in book.accounts}
    start = book.start + WARMUP_DAYS * DAY
    by_rule = {r.id: r for r in rules}
    labels_of: dict[tuple[str, str], list[Label]] = defaultdict(list)
    for lb in book.labels:
        labels_of[(lb.account, lb.metric)].append(lb)
    holidays = [lb for lb in book.labels if lb.kind == "holiday"]
    history: dict[tuple, list[Transition]] = defaultdict(list)
    first_at = None
    for step in replay(rules, blocks, accounts, start, book.end, inhibits=ruleset.inhibits,
                       calendar=ruleset.calendar, quiet_first_run=True):
        first_at = step.at if first_at is None else first_at
        volume.cohort_events += len(step.cohort_events)
        for t in step.transitions:
            if t.event not in ("fired", "renotified", "resolved"):
                continue
            history[t.key].append(t)
            if t.reason == "first evaluation":
                volume.first_run_held += 1
            if not t.notify:
                continue
            volume.notifications += 1
            volume.first_cycle_notifications += t.at == first_at
            if t.event == "fired":
                volume.alerts += 1
                if by_rule[t.state.rule_id].kind in HOLIDAY_KINDS:
                    _cohort_check(t, by_rule[t.state.rule_id], holidays, labels_of, volume)
    volume.account_months += len(book.accounts) * (book.end - start) / (30 * DAY)
    found: set[int] = set()
    for key, events in history.items():
        rule = by_rule[key[0]]
        if rule.kind in LABELLED_KINDS and not _exact(rule):
            _score_key(rule, events, labels_of.get((key[1], key[2]), []), scores[rule.kind], found, book.end)
        elif isinstance(rule.params, QuotaParams) and rule.params.mode == "forecast":
            _score_forecast(rule, events, book, accounts, volume)
    labelled_rules = [r for r in rules if not _exact(r)]
    for lb in book.labels:
        if lb.kind in LABELLED_KINDS and lb.start >= start and _covered(lb, labelled_rules, book):
            sc = scores[lb.kind]
            sc.labels += 1
            if id(lb) in found:
                sc.found += 1
            else:
                sc.missed.append(lb)


def _exact(rule: Rule) -> bool:
    """Quota rules and utilization expansion are exact arithmetic on the data (no labels)."""
    return rule.kind == "quota" or (rule.kind == "expansion" and getattr(rule.params, "mode", "") == "utilization")


def _score_key(rule: Rule, events: list[Transition], labels: list[Label], sc: KindScore, found: set[int],
               book_end: int) -> None:
    kind = rule.kind
    explaining = [lb for lb in labels if lb.kind in EXPLAINS[kind]]
    tracked = [lb for lb in labels if lb.kind in PERSISTS[kind]]
    growth = [lb for lb in labels if lb.kind == "expansion"] if kind == "spike" else []
    last_resolution: tuple[int, Label | None] | None = None
    fired_in: set[int] = set()
    fired_at: int | None = None
    for t in events:
        case = {"rule": rule.id, "account": t.state.account_id, "metric": t.state.metric, "at": t.at}
        if t.event == "fired":
            fired_at = t.at
            sc.alerts += 1
            sc.notified += t.notify
            own = [lb for lb in explaining if lb.kind == kind and _present(lb, t.at, GRACE[kind])]
            if own:
                sc.true_alerts += 1
                found.update(id(lb) for lb in own)
            if own or any(_present(lb, t.at, GRACE[lb.kind]) for lb in explaining):
                sc.explained_alerts += 1
            else:
                sc.false_alerts.append(case)
            if last_resolution is not None and last_resolution[1] is not None:
                lb = last_resolution[1]
                if _present(lb, t.at, GRACE[lb.kind]):
                    sc.flaps += 1
                    sc.flap_cases.append(case | {"resolved_at": last_resolution[0], "label": lb.note})
            last_resolution = None
            for lb in growth:
                if _present(lb, t.at, GRACE["expansion"]):
                    sc.growth_realerts += id(lb) in fired_in
                    fired_in.add(id(lb))
        elif t.event == "resolved":
            sc.resolutions += 1
            persisting = next((lb for lb in tracked if _present(lb, t.at)), None)
            if persisting is None and fired_at is not None:
                ended = [lb for lb in tracked if lb.start < fired_at <= lb.end + GRACE[lb.kind] and lb.end < t.at]
                if ended:
                    sc.resolution_delays.append((t.at - max(lb.end for lb in ended)) / DAY)
            fired_at = None
            if persisting is not None:
                sc.false_recoveries += 1
                sc.false_recovery_cases.append(case | {"label": persisting.note, "until": persisting.end})
            last_resolution = (t.at, persisting)
    if fired_at is not None:  # still open at the end of the book: stuck if its label ended a while before
        ended = [lb for lb in tracked if lb.start < fired_at <= lb.end + GRACE[lb.kind] and lb.end < book_end]
        if ended:
            sc.resolution_delays.append(None)


def _cohort_check(t: Transition, rule: Rule, holidays: list[Label], labels_of: dict, volume: Volume) -> None:
    """A notified alert evaluated on a holiday bucket (or within `for` buckets after) that no label explains."""
    first_bucket = t.at - rule.for_buckets * rule.bucket
    if not any(first_bucket < h.end and h.start < t.at for h in holidays):
        return
    kinds = EXPLAINS.get(rule.kind, (rule.kind,))
    if any(lb.kind in kinds and _present(lb, t.at, GRACE.get(lb.kind, DAY))
           for lb in labels_of.get((t.state.account_id, t.state.metric), [])):
        return
    volume.cohort_alerts += 1
    volume.cohort_cases.append({"rule": rule.id, "account": t.state.account_id, "at": t.at})


def _score_forecast(rule: Rule, events: list[Transition], book: DemoBook, accounts: dict, volume: Volume) -> None:
    """A fired forecast came true when the account's period usage reached the target by the period end."""
    assert isinstance(rule.params, QuotaParams)
    row = book.account_ids.index(events[0].state.account_id)
    acct = accounts[events[0].state.account_id]
    quota = acct.quotas.get(rule.metric)
    values = book.values[rule.metric][row]
    resolved_at = None
    for t in events:
        if t.event == "resolved" and not t.quiet:
            resolved_at = t.at
        if t.event != "fired" or not quota:
            continue
        volume.forecasts += 1
        period = billing_period(t.at - 1, acct.billing_day, acct.timezone)
        lo = max(0, (period.start - book.start) // book.step)
        hi = min(len(values), (period.end - book.start) // book.step)
        if hi - lo < (period.end - period.start) // book.step:  # the period runs past the book's end
            continue
        reached = float(np.nansum(values[lo:hi])) >= rule.params.fraction * quota
        volume.forecasts_true += reached
        if reached and resolved_at is not None and resolved_at > t.at:
            volume.forecast_resolved_then_reached += 1


def measure(ruleset: RuleSet, seeds: Sequence[int] = DEFAULTS["seeds"], n_accounts: int = DEFAULTS["accounts"],
            days: int = DEFAULTS["days"], holidays: int = DEFAULTS["holidays"],
            gaps: int = DEFAULTS["gaps"]) -> tuple[dict[str, KindScore], Volume]:
    scores: dict[str, KindScore] = defaultdict(KindScore)
    volume = Volume()
    for seed in seeds:
        book = generate_book(n_accounts=n_accounts, days=days, seed=seed, holidays=holidays, gaps=gaps)
        score_book(ruleset, book, scores, volume)
    return dict(scores), volume


def anomaly_ruleset(metrics: Sequence[str], bucket: str = "1d", preset: Path = ANOMALY_PRESET) -> RuleSet:
    """The preset with `bucket` (daily by default), its one rule repeated for every metric."""
    head, _, rule = preset.read_text().partition("[[rule]]")
    head = head.replace('bucket = "1h"', f'bucket = "{bucket}"')
    rules = "".join("[[rule]]" + rule.replace('id = "value-anomaly"', f'id = "{m}-anomaly"')
                    .replace('metric = "value"', f'metric = "{m}"') for m in metrics)
    return load_rules_text(head + rules, preset.name)


@dataclass
class Comparison:
    """Recall per label kind and false alarms of one detector on the labelled books."""

    labels: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    found: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    alerts: int = 0
    false_alarms: int = 0
    holiday_alarms: int = 0  # on a book-wide holiday bucket, explained by no label (what a [calendar] mutes)
    account_months: float = 0.0

    def row(self) -> dict:
        recall = {k: (self.found[k] / self.labels[k] if self.labels[k] else None) for k in ANOMALY_LABELS}
        per100 = 100 * self.false_alarms / self.account_months if self.account_months else None
        return {"alerts": self.alerts, "false_alarms": self.false_alarms, "holiday_alarms": self.holiday_alarms,
                "recall": recall,
                "labels": dict(self.labels), "false_alarms_per_100_account_months": per100}


def score_anomaly_book(book: DemoBook, out: Comparison) -> None:
    """Replay the anomaly preset over one book and match its alerts to the labels."""
    ruleset = anomaly_ruleset(sorted(book.values))
    rules = list(ruleset.rules)
    blocks = {(m, s): book.block(m) for (m, s) in history_needed(rules)}
    start = book.start + WARMUP_DAYS * DAY
    labels_of: dict[tuple[str, str], list[Label]] = defaultdict(list)
    for lb in book.labels:
        labels_of[(lb.account, lb.metric)].append(lb)
    real = ("spike", "drop", "inactivity")
    holidays = [lb for lb in book.labels if lb.kind == "holiday"]
    found: set[int] = set()
    for step in replay(rules, blocks, {a.id: a for a in book.accounts}, start, book.end, quiet_first_run=True):
        for t in step.transitions:
            if t.event != "fired":
                continue
            out.alerts += 1
            labels = labels_of.get((t.state.account_id, t.state.metric), [])
            own = [lb for lb in labels if lb.kind in real and _present(lb, t.at, GRACE[lb.kind])]
            found.update(id(lb) for lb in own)
            if own or any(lb.kind == "expansion" and _present(lb, t.at, GRACE["expansion"]) for lb in labels):
                continue
            if any(h.start < t.at <= h.end + DAY for h in holidays):
                out.holiday_alarms += 1
            else:
                out.false_alarms += 1
    for lb in book.labels:
        for row, kinds in ANOMALY_LABELS.items():
            if lb.kind in kinds and lb.start >= start:
                out.labels[row] += 1
                out.found[row] += id(lb) in found
    out.account_months += len(book.accounts) * (book.end - start) / (30 * DAY)


def anomaly_vs_spike_drop(scores: dict[str, KindScore], volume: Volume, seeds: Sequence[int],
                          n_accounts: int, days: int, holidays: int, gaps: int) -> dict[str, dict]:
    """The anomaly preset on the same books, beside the shipped spike and drop rules."""
    anomaly = Comparison()
    for seed in seeds:
        book = generate_book(n_accounts=n_accounts, days=days, seed=seed, holidays=holidays, gaps=gaps)
        score_anomaly_book(book, anomaly)
    rows = {"anomaly": anomaly.row()}
    for kind in ("spike", "drop"):
        s = scores.get(kind, KindScore())
        per100 = 100 * len(s.false_alerts) / volume.account_months if volume.account_months else None
        rows[kind] = {"alerts": s.alerts, "false_alarms": len(s.false_alerts), "holiday_alarms": None,
                      "recall": {kind: s.recall}, "labels": {kind: s.labels},
                      "false_alarms_per_100_account_months": per100}
    return rows


def _delays(delays: list[float | None]) -> dict | None:
    """Median and 90th percentile of the days from a label's end to the resolution, and how many
    episodes were still open at the book's end although their label had ended."""
    done = sorted(d for d in delays if d is not None)
    if not delays:
        return None
    pick = (lambda q: done[min(len(done) - 1, int(q * len(done)))]) if done else (lambda q: None)
    return {"resolved": len(done), "median": pick(0.5), "p90": pick(0.9), "open_at_end": len(delays) - len(done)}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def report(scores: dict[str, KindScore], volume: Volume) -> dict:
    kinds = {k: {"alerts": s.alerts, "notified": s.notified, "true_alerts": s.true_alerts, "labels": s.labels,
                 "found": s.found, "precision": s.precision, "explained_precision": s.explained_precision,
                 "recall": s.recall, "resolutions": s.resolutions, "flaps": s.flaps,
                 "false_recoveries": s.false_recoveries, "growth_realerts": s.growth_realerts,
                 "resolution_delay_days": _delays(s.resolution_delays)}
             for k, s in scores.items()}
    total = KindScore(**{f: sum(getattr(s, f) for s in scores.values())
                         for f in ("alerts", "notified", "true_alerts", "explained_alerts", "labels", "found",
                                   "resolutions", "flaps", "false_recoveries")})
    kinds["overall"] = {"alerts": total.alerts, "notified": total.notified, "precision": total.precision,
                        "explained_precision": total.explained_precision, "recall": total.recall,
                        "flaps": total.flaps, "false_recoveries": total.false_recoveries}
    return {"kinds": kinds, "notifications_per_account_month": volume.per_account_month,
            "alerts": volume.alerts, "notifications": volume.notifications,
            "first_cycle_notifications": volume.first_cycle_notifications,
            "first_run_held": volume.first_run_held, "cohort_events": volume.cohort_events,
            "cohort_alerts": volume.cohort_alerts, "forecasts": volume.forecasts,
            "forecast_precision": volume.forecasts_true / volume.forecasts if volume.forecasts else None,
            "forecast_resolved_then_reached": volume.forecast_resolved_then_reached}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", action="append")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULTS["seeds"]))
    p.add_argument("--fresh", type=int, metavar="N", help="draw N fresh seeds instead of --seeds (printed)")
    p.add_argument("--accounts", type=int, default=DEFAULTS["accounts"])
    p.add_argument("--days", type=int, default=DEFAULTS["days"])
    p.add_argument("--holidays", type=int, default=DEFAULTS["holidays"])
    p.add_argument("--gaps", type=int, default=DEFAULTS["gaps"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-anomaly", action="store_true", help="skip the anomaly kind's comparison")
    p.add_argument("--show-errors", action="store_true", help="list false alerts, missed labels, flaps, ...")
    args = p.parse_args(argv)
    ruleset = load_rules(args.rules or [SHIPPED])
    seeds = [secrets.randbelow(2**31) for _ in range(args.fresh)] if args.fresh else args.seeds
    scores, volume = measure(ruleset, seeds, args.accounts, args.days, args.holidays, args.gaps)
    figures = report(scores, volume) | {"seeds": list(seeds)}
    if not args.no_anomaly:
        figures["anomaly_vs_spike_drop"] = anomaly_vs_spike_drop(scores, volume, seeds, args.accounts, args.days,
                                                                 args.holidays, args.gaps)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"{len(seeds)} books (seeds {', '.join(map(str, seeds))}) x {args.accounts} accounts x {args.days} days, "
          f"{args.holidays} holiday(s) and {args.gaps} gap day(s) each (first {WARMUP_DAYS} days are warm-up)")
    print(f"{'kind':<11} {'alerts':>6} {'true':>5} {'precision':>9} {'explained':>9} {'labels':>6} "
          f"{'found':>5} {'recall':>7} {'flaps':>5} {'false rec.':>10}")
    for kind, s in list(figures["kinds"].items()):
        print(f"{kind:<11} {s['alerts']:>6} {s.get('true_alerts', ''):>5} {_pct(s['precision']):>9} "
              f"{_pct(s['explained_precision']):>9} {s.get('labels', ''):>6} {s.get('found', ''):>5} "
              f"{_pct(s['recall']):>7} {s['flaps']:>5} {s['false_recoveries']:>10}")
    for kind in ("drop", "inactivity", "spike"):
        d = figures["kinds"].get(kind, {}).get("resolution_delay_days")
        if d:
            print(f"{kind}: resolved {d['resolved']} after their label ended, median {d['median']} days later "
                  f"(90% within {d['p90']}); {d['open_at_end']} still open at the end of the book")
    per = figures["notifications_per_account_month"]
    print(f"notifications to people: {volume.notifications:,} ({per:.2f} per account-month); "
          f"first cycle: {volume.first_cycle_notifications} sent, {volume.first_run_held} held by the first-run policy")
    print(f"cohort events: {volume.cohort_events}; alerts about holiday buckets no label explains: "
          f"{volume.cohort_alerts}")
    spikes = scores.get("spike")
    if spikes is not None:
        print(f"spike alerts during a labelled expansion: {spikes.alerts - spikes.true_alerts - len(spikes.false_alerts)},"
              f" of which {spikes.growth_realerts} a second alert of the same expansion")
    if volume.forecasts:
        print(f"quota forecasts: {volume.forecasts} fired, {_pct(figures['forecast_precision'])} reached the target by "
              f"the period end; {volume.forecast_resolved_then_reached} resolved and then reached it anyway")
    if "anomaly_vs_spike_drop" in figures:
        print(f"{'detector':<9} {'alerts':>6} {'spike recall':>12} {'drop recall':>11} {'false alarms':>12}"
              f" {'per 100 account-months':>22} {'holiday alarms':>14}")
        for name, row in figures["anomaly_vs_spike_drop"].items():
            per = row["false_alarms_per_100_account_months"]
            print(f"{name:<9} {row['alerts']:>6} {_pct(row['recall'].get('spike')):>12}"
                  f" {_pct(row['recall'].get('drop')):>11} {row['false_alarms']:>12}"
                  f" {'n/a' if per is None else f'{per:.2f}':>22} {str(row['holiday_alarms'] or '-'):>14}")
    if args.show_errors:
        for kind, s in scores.items():
            for case in s.false_alerts:
                print(f"false {kind}: {case}", file=sys.stderr)
            for lb in s.missed:
                print(f"missed {kind}: {lb}", file=sys.stderr)
            for case in s.flap_cases:
                print(f"flap {kind}: {case}", file=sys.stderr)
            for case in s.false_recovery_cases:
                print(f"false recovery {kind}: {case}", file=sys.stderr)
        for case in volume.cohort_cases:
            print(f"cohort alert: {case}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
