"""Push ingest: usage events POSTed as CloudEvents (JSON, one or a batch), deduplicated and bucketed.

Accepted bodies (CloudEvents 1.0 HTTP binding):
- structured: ``Content-Type: application/cloudevents+json``, one event;
- batch: ``Content-Type: application/cloudevents-batch+json``, a JSON array;
- ``application/json``: one event object or an array of them;
- binary: ``ce-specversion``, ``ce-id``, ``ce-source``, ``ce-type`` (``ce-time``,
  ``ce-subject``...) headers with the event's data as the JSON body.

Each event needs specversion "1.0", id, source and type. Account, metric and
value are read from the event by path (defaults: account = subject, metric =
type, value = data.value). A request is checked whole first: if any event is
malformed the answer is 400 listing each problem (index, id, field) and
nothing is stored. Otherwise, in one transaction, events whose (source, id)
was seen before are dropped and the rest are added to their buckets.

Authentication: ``Authorization: Bearer <secret>`` (the shared secret from
[ingest]); compared in constant time.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from integrations import json_text
from integrations.sources.base import UsageEvent
from integrations.sources.http_fetch import dig
from integrations.sources.records import (
    MAX_ID_LENGTH,
    check_time,
    id_problem,
    is_metric_name,
    shown,
    time_problem,
)
from integrations.sources.refused import (
    Bucket,
    Overflows,
    Refusal,
    kept_events,
    message,
    newly_refused,
    overflows,
    refusing,
)
from rules.config import Secret, Section, Table
from rules.config.secrets import MIN_SECRET_CHARS
from rules.config.urls import path_problem
from rules.periods import iso
from storage.outbox import OutboxItem
from storage.sources import StoreResult, get_source_state, store_batch
from storage.usage import UsageValueError

log = logging.getLogger(__name__)

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
INGEST = Table("ingest", ("enabled", "path", "secret", "secret_file", "source_id", "account", "metric", "value",
                          "default_value", "max_events", "max_body_bytes", "max_age", "max_future", "stale_after"),
               (Table("metric_map", free=True),))
MAX_PROBLEMS = 50


@dataclass(frozen=True)
class PushConfig:
    secret: Secret
    enabled: bool = True
    path: str = "/ingest/events"
    source_id: str = "push"
    account: str = "subject"
    metric: str = "type"
    value: str = "data.value"
    default_value: float | None = None
    metric_map: Mapping[str, str] = field(default_factory=dict)
    max_events: int = 1000
    max_body_bytes: int = 1_000_000
    max_age: int = 7 * 86_400  # older events are refused: their ids are forgotten after this long
    max_future: int = 300
    stale_after: int | None = None  # no events for this long -> stale-source admin alert


def parse_ingest_config(section: Section) -> PushConfig | None:
    """The [ingest] table (None when absent or enabled = false); problems go to the section."""
    if not section.data:
        return None
    section.check_keys(INGEST)
    enabled = section.bool("enabled", True)
    secret = section.secret("secret", required=bool(enabled))
    if enabled and secret is not None and secret.reveal() and len(secret.reveal()) < MIN_SECRET_CHARS:
        # the bearer secret is all that stands between the internet and the usage store (the web UI's
        # tokens and a webhook's signing secret have the same floor)
        section.problem("secret", f"is too short to guard the endpoint: use at least {MIN_SECRET_CHARS} characters "
                                  "(e.g. `openssl rand -hex 32`; value not shown)")
    path = section.str("path", "/ingest/events") or "/ingest/events"
    if not path.startswith("/"):
        section.problem("path", f"must start with / (got {path!r})")
    elif path_problem(path) is not None:
        section.problem("path", str(path_problem(path)))
    source_id = section.str("source_id", "push") or "push"
    if not is_metric_name(source_id):
        section.problem("source_id", f"must be letters, digits and _ . : - only (got {source_id!r})")
    metric_map: dict[str, str] = {}
    t = section.table("metric_map")
    for k in t.data:
        v = t.str(k)
        if v is not None and not is_metric_name(v):
            t.problem(k, f"{v!r} is not a metric name (letters, digits and _ . : -)")
        elif v is not None:
            metric_map[k] = v
    default_value = section.float("default_value", min=0)
    cfg = PushConfig(
        secret=secret or Secret(""), enabled=bool(enabled), path=path, source_id=source_id,
        account=section.str("account", "subject") or "subject", metric=section.str("metric", "type") or "type",
        value=section.str("value", "data.value") or "data.value", default_value=default_value,
        metric_map=metric_map, max_events=section.int("max_events", 1000, min=1, max=100_000) or 1000,
        max_body_bytes=section.int("max_body_bytes", 1_000_000, min=1024) or 1_000_000,
        max_age=section.duration("max_age", 7 * 86_400, min=60) or 7 * 86_400,
        max_future=section.duration("max_future", 300) or 0,
        stale_after=section.duration("stale_after", min=60),
    )
    return cfg if enabled else None


# ------------------------------------------------------------------------ parsing


class PushError(Exception):
    """A refused request: HTTP status, message, and the per-event problems."""

    def __init__(self, status: int, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or []

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.problems:
            out["problems"] = self.problems
        return out


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _binary_event(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    event: dict[str, Any] = {}
    for k, v in headers.items():
        lk = k.lower()
        if lk.startswith("ce-"):
            event[lk[3:]] = v
    ctype = _media_type(headers.get("content-type", ""))
    if body:
        if ctype in ("", JSON) or ctype.endswith("+json"):
            try:
                event["data"] = json_text.loads(body)
            except json_text.JSONProblem as exc:
                raise PushError(400, f"binary-mode event body is not JSON: {exc}") from None
        else:
            raise PushError(415, f"binary-mode data must be JSON (got content-type {ctype!r})")
    return event


def decode_events(headers: Mapping[str, str], body: bytes) -> list[Any]:
    """The raw event objects of a request (not yet validated)."""
    lower = {k.lower(): v for k, v in headers.items()}
    if "ce-specversion" in lower:
        return [_binary_event(lower, body)]
    ctype = _media_type(lower.get("content-type", ""))
    if ctype not in (STRUCTURED, BATCH, JSON):
        raise PushError(415, f"unsupported content-type {ctype or '(none)'!r}: send {STRUCTURED}, {BATCH} or "
                             f"{JSON}, or a binary-mode event with ce-* headers")
    try:
        data = json_text.loads(body)
    except json_text.JSONProblem as exc:
        raise PushError(400, f"body is not valid JSON: {exc}") from None
    if ctype == STRUCTURED:
        if not isinstance(data, dict):
            raise PushError(400, f"{STRUCTURED} must be one event object (send a batch as {BATCH})")
        return [data]
    if ctype == BATCH:
        if not isinstance(data, list):
            raise PushError(400, f"{BATCH} must be a JSON array of events")
        return data
    return data if isinstance(data, list) else [data]


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339(text: Any) -> int:
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected an RFC 3339 timestamp such as 2026-11-03T14:00:00Z, got {shown(text)}")
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{shown(text)} is not an RFC 3339 timestamp (e.g. 2026-11-03T14:00:00Z)") from None
    if dt.tzinfo is None:
        raise ValueError(f"{shown(text)} has no time zone offset (RFC 3339 needs Z or +hh:mm)")
    try:
        return check_time(math.floor(dt.astimezone(UTC).timestamp()))
    except OverflowError:  # year 1 with a positive offset is before year 1 in UTC
        raise ValueError(time_problem(-1e18)) from None


_MISSING = object()


def _path(event: Mapping[str, Any], path: str) -> Any:
    try:
        return dig(event, path)
    except KeyError:
        return _MISSING


def to_usage_events(raw_events: list[Any], cfg: PushConfig, now: int,
                    forgotten_before: int | None = None) -> list[UsageEvent]:
    """Validate every event; raise PushError(400) listing all problems, else the usage events.

    forgotten_before: the source's pruning horizon (storage.sources.prune_events): ids of events
    before it are no longer kept, so such events are refused like those older than max_age.
    """
    if not raw_events:
        raise PushError(400, "no events in the request")
    if len(raw_events) > cfg.max_events:
        raise PushError(413, f"{len(raw_events)} events in one request; at most {cfg.max_events} "
                             "(split the batch)")
    problems: list[dict[str, Any]] = []
    out: list[UsageEvent] = []

    def problem(i: int, eid: Any, fld: str, msg: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append({"index": i, "id": eid[:MAX_ID_LENGTH] if isinstance(eid, str) else None,
                             "field": fld, "message": msg})

    n_bad = 0
    for i, ev in enumerate(raw_events):
        before = len(problems)
        if not isinstance(ev, dict):
            problem(i, None, "", f"expected an event object, got {type(ev).__name__}")
            n_bad += 1
            continue
        eid = ev.get("id")
        if ev.get("specversion") != "1.0":
            problem(i, eid, "specversion", f"must be \"1.0\" (got {shown(ev.get('specversion'))})")
        for attr in ("id", "source", "type"):
            v = ev.get(attr)
            if not isinstance(v, str) or not v:
                problem(i, eid, attr, f"is required: a non-empty string (got {shown(v)})")
            elif attr != "type" and (why := id_problem(v, f"event {attr}")):
                problem(i, eid, attr, why)
        ts = now
        if ev.get("time") is not None:
            try:
                ts = _rfc3339(ev.get("time"))
            except ValueError as exc:
                problem(i, eid, "time", str(exc))
            else:
                if ts > now + cfg.max_future:
                    problem(i, eid, "time", f"is {ts - now} s in the future (more than max_future "
                                            f"{cfg.max_future} s); check the sender's clock")
                elif ts < now - cfg.max_age:
                    problem(i, eid, "time", f"is older than max_age ({cfg.max_age // 86_400} d): its id "
                                            "could no longer be deduplicated, so it is refused")
                elif forgotten_before is not None and ts < forgotten_before:
                    problem(i, eid, "time", f"is before {_iso(forgotten_before)}: ids of older events are "
                                            "no longer kept for deduplication, so it is refused")
        account = _path(ev, cfg.account)
        if account is _MISSING or account is None or isinstance(account, bool) or \
                not isinstance(account, str | int) or not str(account).strip():
            problem(i, eid, cfg.account, "the account id is missing or empty"
                    if account in (_MISSING, None, "") else f"the account id must be a string, got {shown(account)}")
        elif why := id_problem(str(account).strip(), "account id"):
            problem(i, eid, cfg.account, why)
        raw_metric = _path(ev, cfg.metric)
        metric = cfg.metric_map.get(str(raw_metric), str(raw_metric)) if raw_metric is not _MISSING else ""
        if raw_metric is _MISSING or not isinstance(raw_metric, str) or not is_metric_name(metric):
            problem(i, eid, cfg.metric, f"metric {shown(raw_metric if raw_metric is not _MISSING else None)} is not "
                                        "a metric name (letters, digits and _ . : -); map it with metric_map")
        raw_value = _path(ev, cfg.value)
        value: float | None = None
        if raw_value is _MISSING or raw_value is None:
            if cfg.default_value is None:
                problem(i, eid, cfg.value, "the usage value is missing (or set default_value, e.g. 1 to count "
                                           "events)")
            else:
                value = cfg.default_value
        elif isinstance(raw_value, bool) or not isinstance(raw_value, int | float | str):
            problem(i, eid, cfg.value, f"must be a number, got {shown(raw_value)}")
        else:
            try:
                value = float(raw_value)
            except ValueError:
                problem(i, eid, cfg.value, f"must be a number, got {shown(raw_value)}")
            else:
                if not math.isfinite(value) or value < 0:
                    problem(i, eid, cfg.value, f"must be a finite number >= 0, got {shown(raw_value)}")
                    value = None
        if len(problems) > before or value is None:
            n_bad += 1
            continue
        key = json.dumps([ev["source"], ev["id"]], separators=(",", ":"))
        out.append(UsageEvent(str(account).strip(), metric, ts, value, key))
    if n_bad:
        raise PushError(400, f"{n_bad} of {len(raw_events)} event(s) are malformed; nothing was stored",
                        problems)
    return out


# ------------------------------------------------------------------------ endpoint


def _listed(events: list[tuple[int, UsageEvent]]) -> list[dict[str, Any]]:
    """Events of a request as its answer names them: index, source and id (their key is [source, id])."""
    out = []
    for i, e in events[:MAX_PROBLEMS]:
        source, eid = json.loads(e.id)
        out.append({"index": i, "source": source, "id": eid})
    return out


def _part(config: PushConfig, events: Sequence[UsageEvent]) -> str:
    return f"POST {config.path} of {len(events)} event(s)"


@dataclass
class PushOutcome:
    accepted: int
    duplicates: int
    result: StoreResult
    refused: int = 0  # buckets refused and newly told (integrations.sources.refused)


RefusalOutbox = Callable[[str, list[Refusal], int], Sequence[OutboxItem]]  # (part, new refusals, now) -> notices


class PushIngest:
    """The endpoint's logic, independent of the HTTP server: authenticate, parse, store.

    `refusal_outbox`: the admin notices (outbox rows) about buckets a request is refused, queued in
    its transaction (the service's notifiers; None: told in the answer and the log only)."""

    def __init__(self, engine: Engine, config: PushConfig, clock: Callable[[], int],
                 on_stored: Callable[[PushOutcome], None] | None = None,
                 refusal_outbox: RefusalOutbox | None = None) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self.on_stored = on_stored
        self.refusal_outbox = refusal_outbox

    def authorized(self, headers: Mapping[str, str]) -> bool:
        lower = {k.lower(): v for k, v in headers.items()}
        auth = lower.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        expected = self.config.secret.reveal()
        if scheme.lower() != "bearer" or not expected:
            return False
        return hmac.compare_digest(token.strip().encode(), expected.encode())

    def handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for a POST to the ingest path."""
        if not self.authorized(headers):
            return 401, {"error": "missing or wrong shared secret: send 'Authorization: Bearer <secret>'"}
        if len(body) > self.config.max_body_bytes:
            return 413, {"error": f"body is {len(body)} bytes; at most {self.config.max_body_bytes}"}
        now = self.clock()
        prev = get_source_state(self.engine, self.config.source_id)
        try:
            events = to_usage_events(decode_events(headers, body), self.config, now,
                                     forgotten_before=prev.events_forgotten_before if prev else None)
        except PushError as exc:
            return exc.status, exc.body()
        newest_ts = min(max(e.ts for e in events), now)
        watermark = newest_ts if prev is None or prev.watermark is None else max(prev.watermark, newest_ts)
        refused: dict[Bucket, Refusal] = {}
        new: list[Refusal] = []
        found = Overflows({})
        try:
            result = store_batch(self.engine, self.config.source_id, now, events=events, watermark=watermark,
                                 kind="push")
        except UsageValueError as exc:  # a bucket total past the largest float64: stored without it
            # every such bucket found in one read (not one store per bucket), after deduplication: an
            # event counted before is a duplicate, never a refused one
            found = overflows(self.engine, self.config.source_id, events=events)
            try:
                result, refused, new = refusing(lambda r: self._store_without(events, r, found, now), exc,
                                                self.config.source_id, found)
            except UsageValueError as again:  # no bucket to leave out: nothing was stored
                return 400, {"error": str(again)}
        outcome = PushOutcome(result.events_new, result.events_duplicate, result, len(new))
        if self.on_stored is not None:
            self.on_stored(outcome)
        answer: dict[str, Any] = {"accepted": result.events_new, "duplicates": result.events_duplicate,
                                  "events": len(events)}
        if refused:  # told to the sender every time (the admin once)
            copies: dict[Bucket, list[tuple[int, UsageEvent]]] = {b: [] for b in refused}
            for i, e in enumerate(events):  # every copy of a refused id, under its counted (first) copy's bucket
                if (b := found.counted.get(e.id)) in copies:
                    copies[b].append((i, e))
            answer["refused"] = [{"account": b[0], "metric": b[1], "bucket": iso(b[2]), "error": refused[b].reason,
                                  "events": _listed(copies[b])} for b in sorted(refused)]
        if result.events_expired:  # pruned meanwhile (a prune between the check and the store)
            answer["expired"] = result.events_expired
        return 200, answer

    def _store_without(self, events: list[UsageEvent], refused: dict[Bucket, Refusal], found: Overflows,
                       now: int) -> tuple[StoreResult, dict[Bucket, Refusal], list[Refusal]]:
        """Store the request without the new events of the refused buckets, every copy of their ids
        (refused.kept_events: those stored before add nothing and are counted as duplicates), with the notices of the buckets not
        told before, in one transaction; (what was stored, every refused bucket, the newly told).
        The watermark counts the stored events only (store_batch keeps the later of it and the stored one)."""
        sid = self.config.source_id
        new = newly_refused(self.engine, sid, refused)
        part = _part(self.config, events)
        error = message(sid, part, new) if new else None
        outbox = self.refusal_outbox(part, new, now) if new and self.refusal_outbox is not None else ()
        kept = kept_events(events, refused, found)
        watermark = min(max(e.ts for e in kept), now) if kept else None
        result = store_batch(self.engine, sid, now, events=kept, watermark=watermark, kind="push", outbox=outbox,
                             error=error)
        if error:
            log.warning(error, extra={"source": sid, "event": "source_rejected", "part": part})
        return result, dict(refused), new
