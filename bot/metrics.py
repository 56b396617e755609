"""Prometheus metrics in the text exposition format (0.0.4), without a client library.

Counters, gauges and histograms with labels, thread-safe; plus collectors
that compute gauges at scrape time (e.g. each source's poll lag, read from
the database so every replica reports the same numbers). `render()` is what
GET /metrics returns.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from bot.redaction import mask

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# name -> (type, help). Every metric the service exports is declared here (docs/operations.md lists them).
DEFINITIONS: dict[str, tuple[str, str]] = {
    "usagebot_info": ("gauge", "Always 1; labels: version, replica."),
    "usagebot_leader": ("gauge", "1 when this replica is the leader that runs the scheduled jobs."),
    "usagebot_source_polls_total": ("counter", "Polls of a usage source by result (ok, error)."),
    "usagebot_source_rows_total": ("counter", "Usage rows or events delivered by a source."),
    "usagebot_source_rejected_total": ("counter", "Rejected parts of polls (e.g. bad files)."),
    "usagebot_source_poll_seconds": ("histogram", "Duration of one poll of a source."),
    "usagebot_source_poll_lag_seconds": ("gauge", "Seconds since the last successful poll of a source."),
    "usagebot_source_data_age_seconds": ("gauge", "Seconds since a source last brought new data."),
    "usagebot_source_stale": ("gauge", "1 while a source is marked stale."),
    "usagebot_ingest_requests_total": ("counter", "Push-ingest requests by HTTP status."),
    "usagebot_ingest_events_total": ("counter", "Pushed events by result (accepted, duplicate)."),
    "usagebot_evaluations_total": ("counter", "Evaluation runs by reason (bucket closed, late data)."),
    "usagebot_evaluation_seconds": ("histogram", "Duration of one evaluation run."),
    "usagebot_alerts_total": ("counter", "Alert transitions published, by rule and event (fired, renotified, resolved)."),
    "usagebot_deliveries_total": ("counter", "Outbox deliveries by result (sent, failed, dead, deferred, lost)."),
    "usagebot_outbox_rows": ("gauge", "Outbox rows by status."),
    "usagebot_job_runs_total": ("counter", "Scheduled job runs by job and result (ok, error, skipped)."),
    "usagebot_job_seconds": ("histogram", "Duration of a scheduled job run."),
    "usagebot_errors_total": ("counter", "Errors by component (a job id, http, collector)."),
}

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    name: str
    value: float
    labels: Mapping[str, str]


def _labels(labels: Mapping[str, object]) -> Labels:
    # label values are ids, but a secret must not reach a scrape even through one (bot.redaction)
    return tuple(sorted((k, mask(str(v))) for k, v in labels.items()))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v)) if v != int(v) else str(int(v)) if abs(v) < 1e15 else repr(float(v))


class Metrics:
    def __init__(self, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[Labels, float]] = {}
        self._hist: dict[str, dict[Labels, list[float]]] = {}  # per bucket counts + [sum, count]
        self._buckets = buckets
        self._collectors: list[Callable[[], Iterable[Sample]]] = []

    @staticmethod
    def _check(name: str, kind: str) -> None:
        d = DEFINITIONS.get(name)
        if d is None or d[0] != kind:
            raise KeyError(f"metric {name!r} is not declared as a {kind} in bot.metrics.DEFINITIONS")

    def inc(self, name: str, value: float = 1.0, **labels: object) -> None:
        self._check(name, "counter")
        key = _labels(labels)
        with self._lock:
            series = self._values.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: object) -> None:
        self._check(name, "gauge")
        with self._lock:
            self._values.setdefault(name, {})[_labels(labels)] = float(value)

    def observe(self, name: str, value: float, **labels: object) -> None:
        self._check(name, "histogram")
        key = _labels(labels)
        with self._lock:
            h = self._hist.setdefault(name, {}).get(key)
            if h is None:
                h = self._hist[name][key] = [0.0] * (len(self._buckets) + 2)
            for i, b in enumerate(self._buckets):
                if value <= b:
                    h[i] += 1
            h[-2] += value
            h[-1] += 1

    def value(self, name: str, **labels: object) -> float:
        """Current value of a counter or gauge (0 when never set); for tests and readiness."""
        with self._lock:
            return self._values.get(name, {}).get(_labels(labels), 0.0)

    def count(self, name: str, **labels: object) -> int:
        """Observations of a histogram."""
        with self._lock:
            h = self._hist.get(name, {}).get(_labels(labels))
            return int(h[-1]) if h else 0

    def add_collector(self, collect: Callable[[], Iterable[Sample]]) -> None:
        self._collectors.append(collect)

    def render(self) -> str:
        collected: dict[str, dict[Labels, float]] = {}
        for collect in self._collectors:
            try:
                for s in collect():
                    collected.setdefault(s.name, {})[_labels(s.labels)] = s.value
            except Exception:  # a failing collector (database down) must not break the scrape
                self.inc("usagebot_errors_total", component="collector")
        lines: list[str] = []
        with self._lock:
            names = sorted(set(self._values) | set(self._hist) | set(collected))
            for name in names:
                kind, help_text = DEFINITIONS.get(name, ("gauge", ""))
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {kind}")
                if kind == "histogram":
                    for key, h in sorted(self._hist.get(name, {}).items()):
                        for i, b in enumerate(self._buckets):
                            lines.append(f"{name}_bucket{_fmt_labels(key, (('le', _fmt_value(b)),))} {_fmt_value(h[i])}")
                        lines.append(f"{name}_bucket{_fmt_labels(key, (('le', '+Inf'),))} {_fmt_value(h[-1])}")
                        lines.append(f"{name}_sum{_fmt_labels(key)} {_fmt_value(h[-2])}")
                        lines.append(f"{name}_count{_fmt_labels(key)} {_fmt_value(h[-1])}")
                    continue
                series = dict(self._values.get(name, {}))
                series.update(collected.get(name, {}))
                for key, v in sorted(series.items()):
                    lines.append(f"{name}{_fmt_labels(key)} {_fmt_value(v)}")
        return "\n".join(lines) + "\n"
