"""Load and validate TOML rule files into a `RuleSet`.

`check_rules` reads every file, validates everything it can and returns ALL
problems found (file, line, rule id, field, message), so `usagebot check`
can print them at once. `load_rules` is the same but raises `RuleFileError`.
The file format is documented in docs/rules.md; rules/examples/default.toml
is a complete example.

This is the one module of `rules` that touches the file system (reading the
rule files); everything after reading is pure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rules.config import values as v
from rules.config.problems import ConfigError, Problem
from rules.config.tables import Table
from rules.config.toml import decode, field_name, parse_toml
from rules.config.toml_lines import LineMap, PathKey
from rules.config.values import Reader, show, suggest
from rules.durations import MAX_SECONDS, DurationError, format_duration, parse_duration
from rules.kinds import KINDS, Kind, calendar_kinds, with_baseline, with_cohort
from rules.model import (
    DAY,
    INHIBIT_LABELS,
    MAX_METRIC_LENGTH,
    METRIC_PATTERN,
    SEVERITIES,
    WEEK,
    Baseline,
    Calendar,
    Cohort,
    Guards,
    Inhibit,
    Matcher,
    Routing,
    Rule,
    RuleSet,
    Segment,
)
from rules.periods import LONGEST_PERIOD

__all__ = ["RULE_FILE", "Problem", "RuleFileError", "check_rules", "load_rules", "load_rules_text"]


# ----------------------------------------------------------------- public API


class RuleFileError(ConfigError):
    """Rule files failed validation; `.problems` holds every problem found."""


def check_rules(paths: Sequence[str | Path]) -> tuple[RuleSet | None, list[Problem]]:
    """Validate rule files and directories (every *.toml directly inside, sorted by name).

    Returns (RuleSet, []) when everything is valid, else (None, problems) with
    every problem found in every file.
    """
    problems: list[Problem] = []
    files = _expand_paths(paths, problems)
    seen_ids: dict[str, tuple[str, int | None]] = {}
    parts: list[_FileResult] = []
    hashes: dict[str, str] = {}
    for path in files:
        name = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(Problem(name, None, None, None, f"cannot read file: {exc.strerror or exc}"))
            continue
        part, file_problems = _check_file(data, name, seen_ids)
        problems.extend(file_problems)
        parts.append(part)
        hashes[name] = _file_hash(data)
    ruleset = _assemble(parts, problems)
    if problems:
        return None, problems
    return replace(ruleset, files=tuple(str(p) for p in files), file_hashes=hashes), []


def load_rules(paths: Sequence[str | Path]) -> RuleSet:
    """Like `check_rules`, but raises `RuleFileError` listing every problem."""
    ruleset, problems = check_rules(paths)
    if ruleset is None:
        raise RuleFileError(problems)
    return ruleset


def load_rules_text(text: str, filename: str = "<string>") -> RuleSet:
    """Validate rules given as TOML text (hash taken over its UTF-8 bytes)."""
    data = text.encode("utf-8")
    part, problems = _check_file(data, filename, {})
    ruleset = _assemble([part], problems)
    if problems:
        raise RuleFileError(problems)
    return replace(ruleset, files=(filename,), file_hashes={filename: _file_hash(data)})


@dataclass
class _FileResult:
    """What one rule file defines (rules, inhibit rules, a calendar), as validated."""

    file: str
    rules: list[Rule] = field(default_factory=list)
    inhibits: list[Inhibit] = field(default_factory=list)
    inhibit_refs: list[tuple[int, list[str]]] = field(default_factory=list)  # (line, rule ids named)
    calendar: Calendar | None = None
    calendar_line: int | None = None


def _assemble(parts: Sequence[_FileResult], problems: list[Problem]) -> RuleSet:
    """One RuleSet from the files' parts; cross-file checks (inhibit rule ids, one calendar)."""
    rules = [r for p in parts for r in p.rules]
    ids = {r.id for r in rules}
    calendar: Calendar | None = None
    calendar_at = ""
    for p in parts:
        for line, refs in p.inhibit_refs:
            for ref in refs:
                if ref not in ids:
                    problems.append(Problem(p.file, line, None, "inhibit",
                                            f"rule {ref!r} is not defined (or not enabled){suggest(ref, ids)}"))
        if p.calendar is not None:
            if calendar is not None:
                problems.append(Problem(p.file, p.calendar_line, None, "calendar",
                                        f"a [calendar] is already defined at {calendar_at}; keep one"))
            else:
                calendar, calendar_at = p.calendar, f"{p.file}:{p.calendar_line}"
    return RuleSet(tuple(rules), inhibits=tuple(i for p in parts for i in p.inhibits),
                   calendar=calendar or Calendar())


# ------------------------------------------------------------ files and paths


def _file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _expand_paths(paths: Sequence[str | Path], problems: list[Problem]) -> list[Path]:
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        problems.append(Problem("<no paths>", None, None, None, "no rule files or directories given"))
        return []
    files: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            problems.append(Problem(str(raw), None, None, None, "no such file or directory"))
            continue
        if path.is_dir():
            found = sorted(
                (p for p in path.iterdir() if p.suffix == ".toml" and p.is_file() and not p.name.startswith(".")),
                key=lambda p: p.name,
            )
            if not found:
                problems.append(
                    Problem(str(raw), None, None, None, "directory contains no *.toml rule files")
                )
        else:
            found = [path]
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files


def _check_file(
    data: bytes, name: str, seen_ids: dict[str, tuple[str, int | None]]
) -> tuple[_FileResult, list[Problem]]:
    part = _FileResult(name)
    try:
        text = decode(data, name)
        if not text.strip():
            return part, [Problem(name, None, None, None, "file is empty: define at least one [[rule]]")]
        parsed = parse_toml(text, name)
    except ConfigError as exc:
        return part, exc.problems
    problems: list[Problem] = []
    doc, lines = parsed.data, parsed.lines

    file_ctx = _FileContext(name, lines, problems, _file_hash(data))
    _check_document(file_ctx, doc, seen_ids, part)
    problems.sort(key=lambda p: p.line or 0)
    return part, problems


# ------------------------------------------------------------ problem context


@dataclass
class _FileContext:
    file: str
    lines: LineMap
    problems: list[Problem]
    file_hash: str


@dataclass
class _Where:
    """Reports problems for one table: `root` locates it in the document, `label` prefixes field names."""

    ctx: _FileContext
    root: PathKey = ()
    label: PathKey = ()
    rule_id: str | None = None
    notation: v.Notation = v.TOML

    def error(self, path: PathKey, message: str) -> None:
        line = self.ctx.lines.line_of(self.root + path)
        name = field_name(self.label + path) or None
        self.ctx.problems.append(Problem(self.ctx.file, line, self.rule_id, name, message))

    def count(self) -> int:
        return len(self.ctx.problems)


def _bucket_problem(seconds: int) -> str | None:
    if seconds < 60 or seconds > DAY or DAY % seconds:
        return (
            f"must be between 1m and 1d and divide a day evenly "
            f"(e.g. 1m, 5m, 15m, 30m, 1h, 6h, 12h, 1d), got {format_duration(seconds)}"
        )
    return None


def _bucket(w: _Where, path: PathKey, value: Any) -> int | None:
    seconds = v.positive_duration(w, path, value)
    if seconds is None:
        return None
    problem = _bucket_problem(seconds)
    if problem:
        w.error(path, problem)
        return None
    return seconds


_CHANNEL_NAME = re.compile(r"^#[^\s#,]{1,80}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")


def _channels(w: _Where, path: PathKey, value: Any) -> tuple[str, ...] | None:
    channels = v.names(w, path, value)
    if channels is None:
        return None
    ok = True
    for index, channel in enumerate(channels):
        if _CHANNEL_ID.match(channel):
            continue
        if _CHANNEL_NAME.match(channel):
            if channel != channel.lower():
                w.error(path + (index,), f"Slack channel names are lowercase: write {show(channel.lower())}")
                ok = False
            continue
        fixed = "#" + channel.lower()
        hint = f"; did you mean {show(fixed)}?" if _CHANNEL_NAME.match(fixed) else ""
        w.error(
            path + (index,),
            f"{show(channel)} is not a Slack channel: use '#name' or a channel id like 'C0123ABC'{hint}",
        )
        ok = False
    return channels if ok else None


def _metric(w: _Where, path: PathKey, value: Any) -> str | None:
    """A metric name as every source spells one (rules.model.METRIC_PATTERN): a rule on any other
    name ("api calls", "Événements") could never fire, so it is refused here, not found out later."""
    text = v.name(w, path, value)
    if text is None:
        return None
    if len(text) > MAX_METRIC_LENGTH:
        w.error(path, f"must be at most {MAX_METRIC_LENGTH} characters (got {len(text):,})")
        return None
    if not METRIC_PATTERN.fullmatch(text):
        bad = sorted({c for c in text if not METRIC_PATTERN.fullmatch(c)})
        hint = f"; did you mean {w.notation.show(re.sub(r'[^A-Za-z0-9_.:-]+', '_', text))}?" if all(c.isascii() and c.isprintable() for c in bad) else ""
        w.error(path, f"is not a metric name (letters, digits and _ . : - only; got {w.notation.show(text)}, which"
                      f" has {' '.join(repr(c) for c in bad)}){hint}")
        return None
    return text


_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_TEMPLATE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$")


def _template(w: _Where, path: PathKey, value: Any) -> str | None:
    """A template name: a file-name stem, never a path."""
    text = v.name(w, path, value)
    if text is not None and not _TEMPLATE.match(text):
        w.error(
            path,
            f"must be a template name such as \"spike\" (letters, digits, '_', '-', '.'; no paths), got {show(text)}",
        )
        return None
    return text


# What a rule's `action` (the next step shown in its alerts) may name; rules.impact.render_action fills them.
ACTION_FIELDS = ("account", "account_name", "owner", "csm", "metric", "plan", "next_plan", "rule", "severity")


def _action(w: _Where, path: PathKey, value: Any) -> str | None:
    """A next step such as "Call {owner} about {account_name}'s {metric} before renewal": str.format
    placeholders from ACTION_FIELDS only."""
    text = v.string(w, path, value)
    if text is None:
        return None
    try:
        names = v.template_fields(text)
    except v.FormattedPlaceholder as exc:
        w.error(path, f"is not a valid template ({exc})")
        return None
    except ValueError as exc:
        w.error(path, f"is not a valid template ({exc}; write {{{{ and }}}} for literal braces)")
        return None
    bad = [n for n in names if n not in ACTION_FIELDS]
    if bad:
        w.error(path, f"unknown placeholder {{{bad[0]}}}{suggest(bad[0], ACTION_FIELDS)}; placeholders: "
                      + ", ".join(f"{{{n}}}" for n in ACTION_FIELDS))
        return None
    return text


def _rule_id(w: _Where, path: PathKey, value: Any) -> str | None:
    text = v.string(w, path, value)
    if text is None:
        return None
    if not _ID.match(text):
        slug = re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-_.")
        hint = f"; did you mean {show(slug)}?" if slug else ""
        w.error(
            path,
            "must start with a lowercase letter or digit and contain only a-z, 0-9, '_', '.' and '-' "
            f"(got {show(text)}){hint}",
        )
        return None
    return text


# ------------------------------------------------------------------- schemas

_SECTIONS = ("baseline", "threshold", "guards", "segment", "routing", "cohort")

# `for` counts buckets: at most 100 years of the smallest (1m) bucket, the longest duration usagebot
# accepts (rules.durations.MAX_SECONDS): `for = 99999999999999999999` passed the check and the rule
# could never fire.
MAX_FOR = MAX_SECONDS // 60
_TOP_READERS: dict[str, Reader] = {
    "id": _rule_id,
    "kind": v.choice(KINDS),
    "metric": v.name,
    "bucket": _bucket,
    "severity": v.choice(SEVERITIES),
    "description": v.string,
    "for": v.integer(1, MAX_FOR),
    "cooldown": v.any_duration,
    "renotify": v.any_duration,
    "resolve_after": v.any_duration,
    "template": _template,
    "action": _action,
    "enabled": v.boolean,
}
_BASELINE_KEYS = ("window", "method", "seasonality", "min_points")
_GUARD_KEYS = ("min_baseline", "min_value", "min_delta")
_SEGMENT_KEYS = ("plans", "accounts", "exclude_accounts")
_ROUTING_KEYS = ("owner", "channels")
_COHORT_KEYS = ("share", "min_accounts", "by")
# [defaults]: leaf path -> reader
_DEFAULT_READERS: dict[PathKey, Reader] = {
    ("severity",): _TOP_READERS["severity"],
    ("cooldown",): v.any_duration,
    ("renotify",): v.any_duration,
    ("resolve_after",): v.any_duration,
    ("bucket",): _bucket,
    ("for",): v.integer(1, MAX_FOR),
    ("routing", "owner"): v.boolean,
    ("routing", "channels"): _channels,
    ("guards", "min_baseline"): v.number(0),
    ("guards", "min_value"): v.number(0),
    ("guards", "min_delta"): v.number(0),
    ("cohort", "share"): v.in_range(v.number(), 0, 1, "must be a fraction > 0 and <= 1, e.g. 0.3 = 30% of the"
                                                        " accounts"),
    ("cohort", "min_accounts"): v.integer(1),
    ("cohort", "by"): v.choice(("segment", "plan")),
}


def _home_of(key: str, kind: str | None) -> str | None:
    """Where `key` belongs in a rule of `kind`: "" for the [[rule]] table itself, a section, or None."""
    if key in _TOP_READERS or key in _SECTIONS:
        return ""
    if kind in KINDS and key in KINDS[kind].keys:
        return "threshold"
    baseline_kind = kind is None or kind in with_baseline()
    for section, keys, valid in (
        ("baseline", _BASELINE_KEYS, baseline_kind),
        ("guards", _GUARD_KEYS, baseline_kind),
        ("segment", _SEGMENT_KEYS, True),
        ("routing", _ROUTING_KEYS, True),
        ("cohort", _COHORT_KEYS, kind is None or kind in with_cohort()),
    ):
        if valid and key in keys:
            return section
    if kind is None and any(key in k.keys for k in KINDS.values()):
        return "threshold"
    return None


def _check_keys(
    w: _Where, table: dict[str, Any], path: PathKey, allowed: Sequence[str], kind: str | None
) -> None:
    """Report every key of `table` (at `path` inside the rule) that is not in `allowed`."""
    here = path[0] if path else ""
    for key in table:
        if key in allowed:
            continue
        home = _home_of(key, kind)
        if home is not None and home != here:
            where = "directly in the [[rule]] table" if home == "" else f"in [rule.{home}]"
            w.error(path + (key,), f"unknown key here; '{key}' belongs {where}")
            continue
        users = [k.name for k in KINDS.values() if key in k.keys and k.name != kind]
        if users and kind is not None:
            message = f"'{key}' is not a setting of {kind} rules (it is a threshold of {' and '.join(users)} rules)"
            if here == "threshold":
                message += f"; {kind} thresholds are: {', '.join(allowed)}"
            w.error(path + (key,), message)
            continue
        hint = suggest(key, allowed) or f" (allowed: {', '.join(allowed)})"
        w.error(path + (key,), f"unknown key '{key}'{hint}")


def _table(w: _Where, parent: dict[str, Any], key: str, path: PathKey) -> dict[str, Any] | None:
    """parent[key] as a table; {} when absent, None (reported) when not a table."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        w.error(path, f"must be a table (write [rule.{key}] or {key} = {{ ... }}), {v.got(value)}")
        return None
    return value


# ------------------------------------------------------------------ document




def _check_document(
    ctx: _FileContext, doc: dict[str, Any], seen_ids: dict[str, tuple[str, int | None]], part: _FileResult
) -> None:
    top = _Where(ctx)
    for key in doc:
        if key not in _TOP_LEVEL:
            suggestion = suggest(key, _TOP_LEVEL)
            if (key,) in _DEFAULT_READERS or key in ("routing", "guards", "cohort"):
                suggestion = "; file-wide settings go under [defaults], rule settings after a [[rule]] header"
            elif not suggestion and isinstance(doc[key], dict | list):
                suggestion = " (a rules file holds [defaults], [[rule]], [[inhibit]] and [calendar] tables)"
            top.error((key,), f"unknown top-level key '{key}'{suggestion}")

    defaults = _check_defaults(ctx, doc.get("defaults"))
    _check_inhibits(ctx, doc.get("inhibit"), part)
    _check_calendar(ctx, doc.get("calendar"), part)

    raw_rules = doc.get("rule")
    if raw_rules is None:
        if "inhibit" not in doc and "calendar" not in doc:
            top.error((), "no rules defined: add at least one [[rule]] table")
        return
    if isinstance(raw_rules, dict):
        top.error(("rule",), "write each rule as [[rule]] (double brackets), not [rule]")
        return
    if not isinstance(raw_rules, list) or not raw_rules:
        top.error(("rule",), "no rules defined: add at least one [[rule]] table")
        return

    for index, raw in enumerate(raw_rules):
        where = _Where(ctx, root=("rule", index))
        if not isinstance(raw, dict):
            where.error((), f"each rule must be a table, {v.got(raw)}")
            continue
        rule = _check_rule(where, raw, index, defaults, seen_ids)
        if rule is not None:
            part.rules.append(rule)


# ------------------------------------------------------------- inhibit, calendar

_MATCHER_KEYS = ("rules", "kinds")
_INHIBIT_KEYS = ("source", "target", "equal")


def _check_inhibits(ctx: _FileContext, raw: Any, part: _FileResult) -> None:
    """[[inhibit]] tables (Alertmanager's inhibit_rules): source, target, equal."""
    if raw is None:
        return
    top = _Where(ctx)
    if not isinstance(raw, list):
        top.error(("inhibit",), "write each inhibit rule as [[inhibit]] (double brackets)")
        return
    for index, table in enumerate(raw):
        w = _Where(ctx, root=("inhibit", index), label=("inhibit",))
        if not isinstance(table, dict):
            w.error((), f"each inhibit rule must be a table, {v.got(table)}")
            continue
        before = w.count()
        for key in table:
            if key not in _INHIBIT_KEYS:
                w.error((key,), f"unknown key '{key}'{suggest(key, _INHIBIT_KEYS) or ' (allowed: source, target, equal)'}")
        refs: list[str] = []
        matchers = []
        for side in ("source", "target"):
            matcher = _matcher(w, table.get(side), side, refs)
            matchers.append(matcher)
        equal = ("account", "metric")
        if "equal" in table:
            got = v.names(w, ("equal",), table["equal"])
            if got is not None:
                bad = [label for label in got if label not in INHIBIT_LABELS]
                for label in bad:
                    w.error(("equal",), f"unknown label {show(label)}: use {', '.join(INHIBIT_LABELS)}")
                if not got:
                    w.error(("equal",), "must list at least \"account\" (inhibiting across accounts would mute "
                                        "everyone)")
                elif "account" not in got:
                    w.error(("equal",), "must include \"account\": an alert of one account never mutes another's")
                equal = got
        if w.count() > before or matchers[0] is None or matchers[1] is None:
            continue
        line = ctx.lines.exact(("inhibit", index))
        inhibit = Inhibit(matchers[0], matchers[1], equal, ctx.file, line)
        if matchers[0] == matchers[1]:
            w.error(("target",), "is the same as the source: an alert would mute itself")
            continue
        part.inhibits.append(inhibit)
        part.inhibit_refs.append((line or 0, refs))


def _matcher(w: _Where, raw: Any, side: str, refs: list[str]) -> Matcher | None:
    if raw is None:
        w.error((side,), f"required, e.g. {side} = {{ kinds = [\"inactivity\"] }}")
        return None
    if not isinstance(raw, dict):
        w.error((side,), f"must be a table like {{ kinds = [\"drop\"] }} or {{ rules = [\"api-calls-drop\"] }}, {v.got(raw)}")
        return None
    before = w.count()
    for key in raw:
        if key not in _MATCHER_KEYS:
            w.error((side, key), f"unknown key '{key}'{suggest(key, _MATCHER_KEYS) or ' (allowed: rules, kinds)'}")
    rules = v.names(w, (side, "rules"), raw["rules"]) if "rules" in raw else ()
    kinds = v.names(w, (side, "kinds"), raw["kinds"]) if "kinds" in raw else ()
    for kind in kinds or ():
        if kind not in KINDS:
            w.error((side, "kinds"), f"unknown kind {show(kind)}{suggest(kind, KINDS, value=True)}")
    if not rules and not kinds and w.count() == before:
        w.error((side,), "name rules, kinds or both")
    if w.count() > before:
        return None
    refs.extend(rules or ())
    return Matcher(tuple(rules or ()), tuple(kinds or ()))


_CALENDAR_KEYS = ("mute", "kinds")

# What a rule file may hold (tests/test_docs_keys.py checks that docs/rules.md documents every key;
# [rule.threshold] holds the fields of the rule's kind, rules.kinds).
RULE_FILE: tuple[Table, ...] = (
    Table("defaults", tuple(p[0] for p in _DEFAULT_READERS if len(p) == 1),
          tuple(Table(t, tuple(p[1] for p in _DEFAULT_READERS if p[0] == t)) for t in ("routing", "guards", "cohort"))),
    Table("rule", tuple(_TOP_READERS), (
        Table("baseline", _BASELINE_KEYS), Table("threshold", free=True), Table("guards", _GUARD_KEYS),
        Table("segment", _SEGMENT_KEYS), Table("routing", _ROUTING_KEYS), Table("cohort", _COHORT_KEYS))),
    Table("inhibit", ("equal",), (Table("source", _MATCHER_KEYS), Table("target", _MATCHER_KEYS))),
    Table("calendar", _CALENDAR_KEYS),
)
_TOP_LEVEL = tuple(t.name for t in RULE_FILE)


def _check_calendar(ctx: _FileContext, raw: Any, part: _FileResult) -> None:
    """[calendar]: mute = [dates or {from, to} ranges] (UTC days), kinds = [...] they apply to."""
    if raw is None:
        return
    w = _Where(ctx, root=("calendar",), label=("calendar",))
    if not isinstance(raw, dict):
        w.error((), f"must be a table ([calendar]), {v.got(raw)}")
        return
    before = w.count()
    for key in raw:
        if key not in _CALENDAR_KEYS:
            w.error((key,), f"unknown key '{key}'{suggest(key, _CALENDAR_KEYS) or ' (allowed: mute, kinds)'}")
    mute: list[tuple[int, int]] = []
    entries = raw.get("mute", [])
    if not isinstance(entries, list):
        w.error(("mute",), f"must be an array of dates like [2026-12-25, {{ from = 2026-12-24, to = 2026-12-26 }}], {v.got(entries)}")
        entries = []
    for index, entry in enumerate(entries):
        span = _day_range(w, ("mute", index), entry)
        if span is not None:
            mute.append(span)
    kinds = calendar_kinds()
    if "kinds" in raw:
        got = v.names(w, ("kinds",), raw["kinds"])
        for kind in got or ():
            if kind not in KINDS:
                w.error(("kinds",), f"unknown kind {show(kind)}{suggest(kind, KINDS, value=True)}")
        kinds = got or kinds
    if w.count() == before:
        part.calendar = Calendar(tuple(sorted(mute)), tuple(kinds))
        part.calendar_line = ctx.lines.exact(("calendar",))


def _day(w: _Where, path: PathKey, value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        w.error(path, f"must be a date (2026-12-25), not a date-time ({show(value)}): mutes whole UTC days")
        return None
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    w.error(path, f"must be a date such as 2026-12-25, {v.got(value)}")
    return None


def _day_range(w: _Where, path: PathKey, value: Any) -> tuple[int, int] | None:
    """A muted UTC day, or {from, to} (inclusive) days, as [start, end) epoch seconds."""
    if isinstance(value, dict):
        extra = [k for k in value if k not in ("from", "to")]
        for k in extra:
            w.error(path + (k,), f"unknown key '{k}' (a range is {{ from = 2026-12-24, to = 2026-12-26 }})")
        first = _day(w, path + ("from",), value.get("from")) if "from" in value else None
        last = _day(w, path + ("to",), value.get("to")) if "to" in value else None
        if "from" not in value or "to" not in value:
            w.error(path, "a range needs both from and to, e.g. { from = 2026-12-24, to = 2026-12-26 }")
            return None
        if first is None or last is None or extra:
            return None
        if last < first:
            w.error(path + ("to",), f"{last} is before from = {first}")
            return None
        if (last - first).days > 366:
            w.error(path, f"mutes {(last - first).days + 1} days; a calendar mutes days, not seasons (at most 367)")
            return None
    else:
        first = last = _day(w, path, value)
        if first is None:
            return None
    assert first is not None and last is not None
    start = int(dt.datetime(first.year, first.month, first.day, tzinfo=dt.UTC).timestamp())
    return start, start + ((last - first).days + 1) * DAY


@dataclass(frozen=True)
class _Default:
    value: Any  # None when the [defaults] entry itself is invalid (already reported)
    line: int | None


def _check_defaults(ctx: _FileContext, raw: Any) -> dict[PathKey, _Default]:
    w = _Where(ctx, root=("defaults",), label=("defaults",))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        w.error((), f"must be a table ([defaults]), {v.got(raw)}")
        return {}
    allowed = sorted({path[0] for path in _DEFAULT_READERS})
    leaves = [".".join(str(p) for p in path) for path in _DEFAULT_READERS]
    out: dict[PathKey, _Default] = {}
    for key, value in raw.items():
        if key in ("routing", "guards", "cohort"):
            if not isinstance(value, dict):
                w.error((key,), f"must be a table ([defaults.{key}]), {v.got(value)}")
                continue
            sub_allowed = [path[1] for path in _DEFAULT_READERS if path[0] == key]
            for sub, sub_value in value.items():
                if (key, sub) not in _DEFAULT_READERS:
                    hint = suggest(sub, sub_allowed) or f" (allowed: {', '.join(sub_allowed)})"
                    w.error((key, sub), f"unknown key '{sub}'{hint}")
                    continue
                _read_default(w, out, (key, sub), sub_value)
        elif (key,) in _DEFAULT_READERS:
            _read_default(w, out, (key,), value)
        else:
            flat = {path[-1]: path for path in _DEFAULT_READERS if len(path) == 2}
            if key in flat:
                hint = f"; write it under [defaults.{flat[key][0]}]"
            elif _home_of(key, None) is not None:
                hint = "; it cannot have a file-wide default, set it on each rule"
            else:
                hint = suggest(key, allowed)
            w.error((key,), f"'{key}' is not allowed in [defaults]{hint} (allowed: {', '.join(leaves)})")
    return out


def _read_default(w: _Where, out: dict[PathKey, _Default], path: PathKey, value: Any) -> None:
    # an invalid default is kept as None so rules relying on it are not checked against a stand-in
    result = _DEFAULT_READERS[path](w, path, value)
    out[path] = _Default(result, w.ctx.lines.line_of(("defaults",) + path))


# ---------------------------------------------------------------------- rule


class _RuleFields:
    """Validated values of one rule, with [defaults] filled in where the rule is silent."""

    def __init__(self, w: _Where, defaults: dict[PathKey, _Default]) -> None:
        self.w = w
        self.defaults = defaults
        self.values: dict[PathKey, Any] = {}
        self.from_defaults: set[PathKey] = set()

    def read(self, table: dict[str, Any], path: PathKey, reader: Reader, *, use_default: bool = True) -> Any:
        key = path[-1]
        if key in table:
            value = reader(self.w, path, table[key])
        elif use_default and path in self.defaults:
            value = self.defaults[path].value
            self.from_defaults.add(path)
        else:
            return None
        if value is not None:
            self.values[path] = value
        return value

    def origin(self, path: PathKey) -> str:
        if path in self.from_defaults:
            line = self.defaults[path].line
            return " (set in [defaults]" + (f" at line {line})" if line else ")")
        return ""


def _check_rule(
    w: _Where,
    raw: dict[str, Any],
    index: int,
    defaults: dict[PathKey, _Default],
    seen_ids: dict[str, tuple[str, int | None]],
) -> Rule | None:
    ctx = w.ctx
    header_line = ctx.lines.exact(("rule", index))
    before = w.count()
    raw_id = raw.get("id")
    if isinstance(raw_id, str):
        w.rule_id = raw_id
    f = _RuleFields(w, defaults)

    for key in ("id", "kind", "metric"):
        if key not in raw:
            example = {"id": '"api-calls-spike"', "kind": '"spike"', "metric": '"api_calls"'}[key]
            w.error((key,), f"required (e.g. {key} = {example})")

    rule_id = f.read(raw, ("id",), _rule_id)
    if rule_id is not None:
        first = seen_ids.get(rule_id)
        if first is not None:
            where = f"{first[0]}:{first[1]}" if first[1] is not None else first[0]
            w.error(("id",), f"duplicate rule id: already defined at {where}")
        else:
            seen_ids[rule_id] = (ctx.file, header_line)

    kind = f.read(raw, ("kind",), _TOP_READERS["kind"])
    metric = f.read(raw, ("metric",), _metric)
    for key in ("severity", "description", "for", "cooldown", "renotify", "resolve_after", "template", "action",
                "enabled"):
        f.read(raw, (key,), _TOP_READERS[key])
    bucket_ok = f.read(raw, ("bucket",), _bucket) is not None or ("bucket" not in raw and ("bucket",) not in defaults)
    bucket: int = f.values.get(("bucket",), DAY)

    _check_keys(w, raw, (), tuple(_TOP_READERS) + _SECTIONS, kind)

    # sections valid for every kind
    _check_routing(w, f, raw, kind)
    _check_segment(w, f, raw, kind)

    if kind is not None:
        _check_guards(w, f, raw, kind)
        baseline = _check_baseline(w, f, raw, kind, bucket if bucket_ok else None, raw.get("bucket"))
        params = _check_threshold(w, f, raw, KINDS[kind], bucket if bucket_ok else None)
        cohort = _check_cohort(w, f, raw, kind)
        _multiple_of_bucket(w, f, "resolve_after", f.values.get(("resolve_after",)),
                            bucket if bucket_ok else None, path=("resolve_after",))
        if kind == "quota" and bucket_ok:
            _check_for_within_a_period(w, f.values.get(("for",), 1), bucket)
    else:
        baseline, params, cohort = None, None, None

    if w.count() > before or rule_id is None or kind is None or metric is None or params is None:
        return None
    if f.values.get(("enabled",), True) is False:
        return None
    got = f.values
    rule = Rule(
        id=rule_id,
        kind=kind,
        metric=metric,
        bucket=bucket,
        params=params,
        severity=got.get(("severity",), "warning"),
        description=got.get(("description",), ""),
        for_buckets=got.get(("for",), 1),
        cooldown=got.get(("cooldown",), 0),
        renotify=got.get(("renotify",), 0),
        baseline=baseline or Baseline(),
        guards=Guards(**{p[1]: got[p] for p in got if p[0] == "guards"}),
        segment=Segment(**{p[1]: got[p] for p in got if p[0] == "segment"}),
        routing=Routing(**{p[1]: got[p] for p in got if p[0] == "routing"}),
        template=got.get(("template",)),
        action=got.get(("action",)),
        source_file=ctx.file,
        source_line=header_line,
        rule_hash=ctx.file_hash,
        resolve_after=got.get(("resolve_after",)),
        cohort=cohort,
    )
    return rule if _within_bounds(w, rule) else None


# The most history one rule may ask for: a year-on-year comparison of a 1h series needs ~400
# days (9,600 buckets); 1,000 days or 1,000,000 buckets per account (8 MB of float64 each, 80 GB
# at 10k accounts) is past any rule that can be evaluated, and "5000w" of 1m buckets asks for 384 MiB per account.
MAX_HISTORY_DAYS = 1000
MAX_HISTORY_BUCKETS = 1_000_000


def _check_for_within_a_period(w: _Where, for_buckets: Any, bucket: int) -> None:
    """A quota episode belongs to one billing period (its level or forecast closes when the period ends), so
    `for` past the longest period could never be met: the rule would never fire."""
    if not isinstance(for_buckets, int) or for_buckets * bucket <= LONGEST_PERIOD:
        return
    w.error(("for",), f"{for_buckets:,} buckets of {format_duration(bucket)} is longer than a billing period (at most"
                      f" 31 days): a quota alert belongs to one period, so it could never fire; use at most"
                      f" {LONGEST_PERIOD // bucket:,}")


def _within_bounds(w: _Where, rule: Rule) -> bool:
    """Refuse a rule whose evaluation needs more history than can be held (with the estimate)."""
    from rules.detectors import required_history

    seconds = required_history(rule)
    buckets = seconds // rule.bucket
    if seconds <= MAX_HISTORY_DAYS * DAY and buckets <= MAX_HISTORY_BUCKETS:
        return True
    w.error((), f"needs {format_duration(seconds)} of history ({buckets:,} buckets of"
                f" {format_duration(rule.bucket)}: {_bytes(buckets * 8)} per account per evaluation); the limit is"
                f" {MAX_HISTORY_DAYS:,} days and {MAX_HISTORY_BUCKETS:,} buckets: shorten its windows")
    return False


def _bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def _check_cohort(w: _Where, f: _RuleFields, raw: dict[str, Any], kind: str) -> Cohort | None:
    """cohort = false, or [rule.cohort] share / min_accounts / by (drop and inactivity: on by default)."""
    value = raw.get("cohort")
    kinds = with_cohort()
    if isinstance(value, bool):
        if value and kind not in kinds:
            w.error(("cohort",), f"cohort suppression applies to {', '.join(kinds)} rules, not {kind} rules")
            return None
        return Cohort() if value else None
    if kind not in kinds:
        if "cohort" in raw:
            w.error(("cohort",), f"cohort suppression applies to {', '.join(kinds)} rules, not {kind} rules")
        return None
    table = _table(w, raw, "cohort", ("cohort",))
    if table is None:
        return None
    _check_keys(w, table, ("cohort",), _COHORT_KEYS, kind)
    got = {key: f.read(table, ("cohort", key), _DEFAULT_READERS[("cohort", key)]) for key in _COHORT_KEYS}
    if not table and kind not in with_cohort(default_only=True):  # [defaults.cohort] tunes, never turns it on
        return None
    return Cohort(**{k: x for k, x in got.items() if x is not None})


def _check_routing(w: _Where, f: _RuleFields, raw: dict[str, Any], kind: str | None) -> None:
    table = _table(w, raw, "routing", ("routing",))
    if table is None:
        return
    _check_keys(w, table, ("routing",), _ROUTING_KEYS, kind)
    f.read(table, ("routing", "owner"), v.boolean)
    f.read(table, ("routing", "channels"), _channels)


def _check_segment(w: _Where, f: _RuleFields, raw: dict[str, Any], kind: str | None) -> None:
    table = _table(w, raw, "segment", ("segment",))
    if table is None:
        return
    _check_keys(w, table, ("segment",), _SEGMENT_KEYS, kind)
    for key in _SEGMENT_KEYS:
        f.read(table, ("segment", key), v.names, use_default=False)
    included = set(f.values.get(("segment", "accounts"), ()))
    excluded = f.values.get(("segment", "exclude_accounts"), ())
    for index, account in enumerate(excluded):
        if account in included:
            w.error(
                ("segment", "exclude_accounts", index),
                f"{show(account)} is also listed in segment.accounts; list it in one of them only",
            )


def _check_guards(w: _Where, f: _RuleFields, raw: dict[str, Any], kind: str) -> None:
    if not KINDS[kind].baseline:
        if "guards" in raw:
            w.error(("guards",), f"guards apply to {' and '.join(with_baseline())} rules only, not {kind} rules"
                                 f"{KINDS[kind].guards_hint}")
        return
    table = _table(w, raw, "guards", ("guards",))
    if table is None:
        return
    _check_keys(w, table, ("guards",), _GUARD_KEYS, kind)
    for key in _GUARD_KEYS:
        f.read(table, ("guards", key), v.number(0))
    if kind == "drop" and "min_value" in table:
        w.error(("guards", "min_value"), "applies to spike rules only; for a drop rule use min_baseline")


def _check_baseline(
    w: _Where,
    f: _RuleFields,
    raw: dict[str, Any],
    kind: str,
    bucket: int | None,
    raw_bucket: Any,
) -> Baseline | None:
    if not KINDS[kind].baseline:
        if "baseline" in raw:
            w.error(("baseline",), f"only {' and '.join(with_baseline())} rules have a baseline; remove it from this"
                                   f" {kind} rule")
        return None
    table = _table(w, raw, "baseline", ("baseline",))
    if table is None:
        return None
    before = w.count()
    _check_keys(w, table, ("baseline",), _BASELINE_KEYS, kind)
    window = f.read(table, ("baseline", "window"), v.positive_duration, use_default=False)
    method = f.read(table, ("baseline", "method"), v.choice(("median", "mean", "upper")), use_default=False)
    seasonality = f.read(table, ("baseline", "seasonality"), v.choice(("none", "weekly")), use_default=False)
    min_points = f.read(table, ("baseline", "min_points"), v.integer(1), use_default=False)
    if w.count() > before:
        return None
    result = Baseline(
        **{k: x for k, x in (("window", window), ("method", method), ("seasonality", seasonality),
                             ("min_points", min_points)) if x is not None}
    )
    given = "window" in table
    where_window = ("baseline", "window") if given else ("baseline",)
    if result.seasonality == "weekly":
        if bucket is None:
            seconds = _quiet_duration(raw_bucket)
            if seconds and WEEK % seconds:
                w.error(
                    ("baseline", "seasonality"),
                    f"weekly seasonality needs a bucket that divides a week; {format_duration(seconds)} does not",
                )
        if result.window < WEEK:
            w.error(
                where_window,
                "weekly seasonality compares with the same time one or more weeks earlier, so the window "
                f"must be at least 7d (got {format_duration(result.window)})",
            )
            return None
        if result.window % WEEK:
            weeks = result.window // WEEK
            w.error(
                where_window,
                f"with weekly seasonality the window must be a whole number of weeks: "
                f"{format_duration(result.window)} uses only {weeks}; write {weeks * 7}d or {(weeks + 1) * 7}d",
            )
            return None
        points = result.window // WEEK
        points_text = f"a {format_duration(result.window)} weekly window has only {points} same-weekday point(s)"
    else:
        if bucket is None:
            return result
        if result.window % bucket:
            w.error(
                where_window,
                f"{format_duration(result.window)} is not a whole multiple of the bucket "
                f"{format_duration(bucket)}{f.origin(('bucket',))}",
            )
            return None
        points = result.window // bucket
        points_text = (
            f"a {format_duration(result.window)} window of {format_duration(bucket)} buckets "
            f"has only {points} point(s)"
        )
    if result.min_points > points:
        where = ("baseline", "min_points") if "min_points" in table else where_window
        w.error(where, f"min_points {result.min_points} can never be met: {points_text}")
        return None
    return result


def _quiet_duration(value: Any) -> int | None:
    try:
        return parse_duration(value)
    except DurationError:
        return None


# ----------------------------------------------------------------- thresholds


def _check_threshold(w: _Where, f: _RuleFields, raw: dict[str, Any], kind: Kind, bucket: int | None) -> Any:
    """[rule.threshold] of a rule of `kind`: its fields (mode by mode) read, the kind's checks run;
    the kind's params, or None when something is wrong."""
    table = _table(w, raw, "threshold", ("threshold",))
    if table is None:
        return None
    before = w.count()
    mode: str | None = None
    allowed = kind.keys
    if kind.modes:
        modes = kind.mode_keys()
        mode = f.read(table, ("threshold", "mode"), v.choice(kind.modes), use_default=False)
        if "mode" not in table:
            mode = kind.modes[0]
        if mode is not None:
            others = {k for m, keys in modes.items() if m != mode for k in keys} - set(modes[mode])
            for key in table:
                if key in others:
                    owner = next(m for m, keys in modes.items() if key in keys)
                    set_mode = "" if "mode" in table else f' (mode defaults to "{mode}")'
                    w.error(
                        ("threshold", key),
                        f'applies to mode = "{owner}" only; this {kind.name} rule uses mode "{mode}"{set_mode}',
                    )
            allowed = ("mode", *modes[mode], *sorted(others))
    _check_keys(w, table, ("threshold",), allowed, kind.name)
    got: dict[str, Any] = {}
    for key, reader in kind.readers().items():
        value = f.read(table, ("threshold", key), reader, use_default=False)
        if value is not None:
            got[key] = value
    params = kind.params(**got, **({"mode": mode} if mode is not None else {}))
    kind.check(_Threshold(w, f, table, kind.name, mode, bucket, got, params))
    return params if w.count() == before else None


@dataclass
class _Threshold:
    """rules.kinds.Threshold: what a kind's check sees of a rule's [rule.threshold]."""

    w: _Where
    f: _RuleFields
    table: dict[str, Any]
    kind: str
    mode: str | None
    bucket: int | None
    got: dict[str, Any]
    params: Any

    def given(self, key: str) -> bool:
        return key in self.table

    def shown(self, key: str) -> str:
        return show(self.table[key])

    def error(self, key: str | None, message: str) -> None:
        self.w.error(("threshold",) if key is None else ("threshold", key), message)

    def multiple_of_bucket(self, key: str) -> None:
        _multiple_of_bucket(self.w, self.f, key, self.got.get(key), self.bucket)


def _multiple_of_bucket(w: _Where, f: _RuleFields, key: str, seconds: int | None, bucket: int | None,
                        path: PathKey | None = None) -> None:
    if seconds is None or bucket is None or seconds % bucket == 0:
        return
    w.error(
        path or ("threshold", key),
        f"{format_duration(seconds)} is not a whole multiple of the bucket "
        f"{format_duration(bucket)}{f.origin(('bucket',))}",
    )
