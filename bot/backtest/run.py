"""`usagebot backtest`: replay rules over usage history, printing alert events.

The usage CSV is read in chunks into columns (storage.usage_columns: the
service's bucketing and missing-data rules, no database), blocks are built
from them, and `rules.replay` steps through every bucket close time, evaluating
only data that had ended by then. So a backtest shows what the scheduler
would have sent.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bot.progress import activity, progress
from bot.service.alerts import PUBLISHED_EVENTS, alert_notice, recent_values
from integrations.console import format_number
from integrations.notice import AlertNotice
from integrations.sources.csv_rows import RowError, iter_usage_csv_columns, read_accounts_csv, write_rejects
from integrations.sources.records import MAX_TIME, time_problem
from rules.engine import CohortEvent, history_needed
from rules.gcpause import gc_paused
from rules.impact import Pricing
from rules.lifecycle import EpisodeState, Key
from rules.lint import facts_of, lint
from rules.model import AccountFacts, MetricBlock, RuleSet
from rules.periods import iso
from rules.replay import evaluation_times, replay
from storage.usage import UsageValueError
from storage.usage_columns import UsagePoints


class BacktestError(Exception):
    """A problem with the backtest's inputs (message names file/flag)."""


READ_BLOCK_BYTES = 2 << 20  # CSV bytes per columnar block: the reader's memory is ~25x it (16 MB: ~450 MB)
MAX_SPAN = 10 * 366 * 86_400  # a backtest replays at most ten years
MAX_CELLS = 100_000_000  # accounts x buckets of one metric block held in memory (8 bytes each: 800 MB)


def check_span(rules: Sequence[Any], start: int, end: int, accounts: int) -> None:
    """Refuse a replay that cannot be run (BacktestError says why and what to narrow): more than
    MAX_SPAN, or a block of more than MAX_CELLS (accounts x buckets of the finest rule, history included)."""
    if end - start > MAX_SPAN:
        raise BacktestError(f"the backtest would replay {iso(start)} .. {iso(end)} ({(end - start) // 86_400:,} "
                            f"days); at most {MAX_SPAN // 86_400:,} days: narrow it with --from/--to (or check "
                            "the usage file for wrong years)")
    for (metric, step), hist in history_needed(list(rules)).items():
        cells = accounts * ((end - start + hist) // step + 1)
        if cells > MAX_CELLS:
            raise BacktestError(f"the backtest of metric {metric!r} in {step}s buckets over {iso(start)} .. "
                                f"{iso(end)} for {accounts:,} accounts needs {cells:,} cells (at most "
                                f"{MAX_CELLS:,}, ~{MAX_CELLS * 8 // 10**6:,} MB); narrow it with --from/--to")

def parse_time(text: str, flag: str) -> int:
    """ISO-8601 date or date-time; no offset means UTC; within the times usagebot accepts (1970..2100)."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise BacktestError(f"{flag}: {text!r} is not an ISO-8601 date or time (e.g. 2026-11-01 or "
                            f"2026-11-01T12:00:00Z)") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        ts = int(dt.timestamp())
    except (OverflowError, ValueError):
        ts = -1 if dt.year < 1970 else MAX_TIME
    why = time_problem(ts)
    if why is not None:
        raise BacktestError(f"{flag}: {why}")
    return ts


@dataclass
class Contained:
    """A (rule, account) the replay left undecided because the rule's computation on its usage is not a
    finite number (rules.engine contains it to that account): when, how often, why."""

    first: int
    last: int
    evaluations: int
    why: str


@dataclass
class BacktestResult:
    events: list[AlertNotice] = field(default_factory=list)  # the published events' notices
    start: int = 0
    end: int = 0
    rows_loaded: int = 0
    rows_rejected: int = 0
    rejected: list[str] = field(default_factory=list)
    open_at_end: dict[str, int] = field(default_factory=dict)  # rule -> episodes still firing
    cohort_events: list[CohortEvent] = field(default_factory=list)  # held as calendar/pipeline events
    first_run_held: int = 0  # conditions already true at the first evaluation, recorded but not notified
    warnings: list[str] = field(default_factory=list)  # rules.lint findings, then the contained accounts
    contained: dict[tuple[str, str], Contained] = field(default_factory=dict)  # (rule, account) left undecided
    blocks: dict[tuple[str, int], MetricBlock] = field(default_factory=dict)  # the usage replayed (for --report)
    accounts: dict[str, AccountFacts] = field(default_factory=dict)


def run_backtest(
    ruleset: RuleSet,
    usage_csv: str | Path,
    accounts_csv: str | Path | None = None,
    start: int | None = None,
    end: int | None = None,
    on_error: str = "reject",
    rejects_path: str | Path | None = None,
    include_suppressed: bool = True,
    first_run: str = "digest",
    show_progress: bool = False,
    on_event: Callable[[AlertNotice], None] | None = None,
    pricing: Pricing | None = None,
) -> BacktestResult:
    """Replay `ruleset` over the CSV history as the service would evaluate it.

    pricing: the service's [pricing] (the money in each alert, the renewal raise of its severity);
    its defaults when not given, as the service without a [pricing] table.

    first_run: the service's [evaluation] first_run policy; with "digest" or "quiet" the
    conditions already true at the first evaluation are recorded, not notified.
    show_progress: bars on stderr (when it is a terminal).
    on_event: called with each alert event as the replay reaches it (in time order), instead of
    keeping the events in the result: the output streams and memory does not grow with them.
    """
    with activity(f"reading {Path(usage_csv).name}", enabled=show_progress):
        points, errors = _read_points(usage_csv, on_error)
        accts = read_accounts_csv(accounts_csv, on_error=on_error) if accounts_csv else None
    errors += list(accts.errors) if accts else []
    if errors and rejects_path:
        write_rejects(rejects_path, errors)
    result = BacktestResult(rows_loaded=points.records, rows_rejected=len(errors),
                            rejected=[str(e) for e in errors])
    if not points.records:
        raise BacktestError(f"{usage_csv}: no usage rows to replay")
    try:
        points.freeze()
    except UsageValueError as exc:
        raise BacktestError(f"{usage_csv}: {exc}") from None
    metric_facts, with_usage = points.metric_facts()
    facts = facts_of(Path(usage_csv).name, metric_facts, with_usage, accts.records if accts else [])
    findings = lint(ruleset, facts)
    refused = [str(p) for p in findings if p.level == "error"]
    if refused:
        raise BacktestError("; ".join(refused))
    result.warnings = [str(p) for p in findings]

    accounts: dict[str, AccountFacts] = {a.id: a for a in (accts.records if accts else [])}
    rules = list(ruleset.rules)
    rng = points.time_range()
    assert rng is not None
    data_start, data_last = rng
    biggest = max(r.bucket for r in rules)
    if end is None:
        end = (data_last // biggest + 1) * biggest  # close of the last bucket with data
    if start is None:
        start = (data_start // biggest) * biggest
    if end <= start:
        raise BacktestError(f"--to ({iso(end)}) must be after --from ({iso(start)})")
    check_span(rules, start, end, points.accounts())
    blocks: dict[tuple[str, int], MetricBlock] = {}
    for (metric, step), hist in history_needed(rules).items():
        b_start = ((start - hist) // step) * step
        b_end = -(-end // step) * step
        blocks[(metric, step)] = points.block(metric, step, b_start, b_end)
    del points  # the blocks hold what the replay reads

    bar = progress("replaying", total=len(evaluation_times(rules, start, end)), unit=" buckets",
                   enabled=show_progress)
    with bar as steps, gc_paused():  # millions of long-lived small objects, no cycles: see rules.gcpause
        last_states = _replay_events(ruleset, blocks, accounts, start, end, include_suppressed, first_run, steps,
                                     result, on_event or result.events.append, pricing or Pricing())
    result.warnings += contained_warnings(result.contained)
    for s in last_states.values():
        if s.status == "firing":
            result.open_at_end[s.rule_id] = result.open_at_end.get(s.rule_id, 0) + 1
    result.start, result.end = start, end
    result.blocks, result.accounts = blocks, accounts
    return result


def contained_warnings(contained: Mapping[tuple[str, str], Contained]) -> list[str]:
    """One warning per (rule, account) the replay left undecided at some evaluations because the rule's
    computation on its usage is not a finite number (as the service logs it per cycle): a backtest
    that says nothing about them would read as "no alert" where the rule could not judge."""
    return [f"warning: account {account!r} not evaluated by rule {rule!r} at {c.evaluations} evaluation(s)"
            f" ({iso(c.first)}{'' if c.first == c.last else ' to ' + iso(c.last)}): {c.why}; fix or re-load its usage"
            for (rule, account), c in sorted(contained.items())]


def _read_points(usage_csv: str | Path, on_error: str) -> tuple[UsagePoints, list[RowError]]:
    """The usage CSV as columns, read in chunks by the columnar parser (the row parser only where a
    block holds a row it does not take as is; no parsed record outlives its chunk); CsvInputError
    (every bad row) in "reject" mode, the skipped rows' errors in "skip" mode."""
    points = UsagePoints()
    errors: list[RowError] = []
    for chunk in iter_usage_csv_columns(usage_csv, on_error=on_error,  # type: ignore[arg-type]
                                        block_bytes=READ_BLOCK_BYTES):
        errors += chunk.errors
        points.add(chunk.records)
    return points, errors


def _replay_events(ruleset: RuleSet, blocks: dict[tuple[str, int], MetricBlock], accounts: dict[str, AccountFacts],
                   start: int, end: int, include_suppressed: bool, first_run: str, bar: Any,
                   result: BacktestResult, emit: Callable[[AlertNotice], None],
                   pricing: Pricing) -> Mapping[Key, EpisodeState]:
    """Replay [start, end): the published alert events go to `emit` as they happen, cohort events and
    first-run holds into `result`; returns the states at the end."""
    by_id = ruleset.by_id()
    last_states: Mapping[Key, EpisodeState] = {}
    row_of = {key: {a: i for i, a in enumerate(b.account_ids)} for key, b in blocks.items()}
    for step in replay(list(ruleset.rules), blocks, accounts, start, end, inhibits=ruleset.inhibits,
                       calendar=ruleset.calendar, quiet_first_run=first_run != "notify", pricing=pricing):
        last_states = step.states
        bar.update(1)
        result.cohort_events.extend(step.cohort_events)
        for rule_id, account_id, why in step.contained:
            seen = result.contained.setdefault((rule_id, account_id), Contained(step.at, step.at, 0, why))
            seen.last, seen.evaluations = step.at, seen.evaluations + 1
        result.first_run_held += sum(1 for t in step.transitions if t.reason == "first evaluation")
        for t in step.transitions:
            if t.event not in PUBLISHED_EVENTS or (not include_suppressed and not t.notify):
                continue
            rule = by_id[t.state.rule_id]
            key = (rule.metric, rule.bucket)
            rec = alert_notice(t, rule, accounts.get(t.state.account_id),
                               recent_values(blocks[key], t.state.account_id, t.at, row_of=row_of[key]),
                               pricing=pricing)
            emit(rec)
    return last_states


JSON_DROP = ("recent", "routing", "template", "description")


def json_line(ev: AlertNotice) -> str:
    """One event as `--format json` prints it."""
    record = ev.record()  # a fresh dict: drop the keys in place (a filtered copy of ~40 keys cost 1/6 of this)
    for k in JSON_DROP:
        record.pop(k, None)
    return json.dumps(record, sort_keys=False)


def _fmt(x: Any) -> str:
    return "-" if x is None else format_number(x)


def summary_rows(result: BacktestResult, ruleset: RuleSet) -> list[list[str]]:
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"fired": 0, "notified": 0, "suppressed": 0,
                                                          "resolved": 0, "accounts": set(), "durations": []})
    fired_at: dict[tuple, int] = {}
    for ev in result.events:
        p = per[ev.rule]
        if ev.event == "fired":
            p["fired"] += 1
            p["notified" if ev.notified else "suppressed"] += 1
            p["accounts"].add(ev.account)
            fired_at[ev.episode_key] = ev.at
        elif ev.event == "resolved":
            p["resolved"] += 1
            if ev.episode_key in fired_at:
                p["durations"].append(ev.at - fired_at.pop(ev.episode_key))
    rows = []
    for rule in ruleset.rules:
        p = per[rule.id]
        med = statistics.median(p["durations"]) / 86_400 if p["durations"] else None
        rows.append([rule.id, rule.kind, str(p["fired"]), str(p["notified"]), str(p["suppressed"]),
                     str(p["resolved"]), str(result.open_at_end.get(rule.id, 0)), str(len(p["accounts"])),
                     "-" if med is None else f"{med:.1f}d"])
    return rows


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> Iterable[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
              for i in range(len(header))]
    yield "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
    yield "  ".join("-" * w for w in widths)
    for r in rows:
        yield "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()


def write_table(result: BacktestResult, ruleset: RuleSet, out: TextIO) -> None:
    print(f"Backtest {iso(result.start)} .. {iso(result.end)}: {len(ruleset.rules)} rules, "
          f"{result.rows_loaded:,} usage rows" +
          (f", {result.rows_rejected:,} rejected rows" if result.rows_rejected else ""), file=out)
    print(file=out)
    rows = []
    for ev in result.events:
        event = ev.event + ("" if ev.notified else f" ({ev.suppressed_reason})")
        rows.append([iso(ev.at), event, ev.severity, ev.rule, ev.account, ev.metric,
                     _fmt(ev.value), _fmt(ev.baseline), _fmt(ev.threshold), ev.message])
    if rows:
        for line in _table(rows, ["AT", "EVENT", "SEVERITY", "RULE", "ACCOUNT", "METRIC", "VALUE",
                                  "BASELINE", "THRESHOLD", "MESSAGE"]):
            print(line, file=out)
    else:
        print("No alert events in this range.", file=out)
    if result.first_run_held:
        print(f"\n{result.first_run_held} condition(s) already true at the first evaluation were recorded without"
              " notifying (first_run policy; --first-run notify sends them).", file=out)
    for ev in result.cohort_events:
        print(f"cohort event {iso(ev.at)}: rule {ev.rule_id}: {ev.accounts} of {ev.decided} accounts"
              f" ({ev.share:.0%}, {ev.cohort}) at once; held, no account alerts", file=out)
    print(file=out)
    print("Summary per rule", file=out)
    for line in _table(summary_rows(result, ruleset), ["RULE", "KIND", "FIRED", "NOTIFIED", "SUPPRESSED",
                                                       "RESOLVED", "OPEN AT END", "ACCOUNTS",
                                                       "MEDIAN DURATION"]):
        print(line, file=out)
