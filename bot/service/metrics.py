"""The service's Prometheus metrics, through prometheus_client.

Every metric the service exports is declared once in DEFINITIONS (type, help,
label names); docs/operations.md lists them and a test checks the two agree.
Each `Metrics` holds its own registry (tests run several services in one
process) with prometheus_client's process, platform and GC collectors, so a
scrape also shows memory, CPU, open file descriptors and garbage collections.

Counters and histograms whose label values are known up front are
initialised to 0 (`Metrics.initialise`), so a series exists from the first
scrape instead of appearing on first use (rate() and absent() work from the
start). Gauges computed at scrape time from the database (each source's poll
lag, the outbox backlog) come from collectors (`add_collector`); a failing
collector counts usagebot_errors_total{component="collector"} and never
breaks the scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector

from rules.config.redaction import mask

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the default; OpenMetrics on request (Accept)
DEFAULT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HTTP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# `_created` series double every counter's series count and no dashboard of ours reads them.
disable_created_metrics()


@dataclass(frozen=True)
class Definition:
    kind: str  # counter | gauge | histogram | collected (a gauge computed at scrape time by a collector)
    help: str
    labels: tuple[str, ...] = ()


# name -> definition. Every metric the service exports is declared here (docs/operations.md lists them).
DEFINITIONS: dict[str, Definition] = {
    "usagebot_info": Definition("gauge", "Always 1; labels: version, replica.", ("version", "replica")),
    "usagebot_leader": Definition("gauge", "1 when this replica is the leader that runs the scheduled jobs."),
    "usagebot_source_polls_total": Definition("counter", "Polls of a usage source by result (ok, error).",
                                              ("source", "result")),
    "usagebot_source_rows_total": Definition("counter", "Usage rows or events delivered by a source.", ("source",)),
    "usagebot_source_rejected_total": Definition("counter", "Rejected parts of polls (e.g. bad files).", ("source",)),
    "usagebot_source_skipped_total": Definition("counter", "Malformed items a poll left out (on_error = skip).",
                                                ("source",)),
    "usagebot_source_poll_seconds": Definition("histogram", "Duration of one poll of a source.", ("source",)),
    "usagebot_source_poll_lag_seconds": Definition("collected", "Seconds since the last successful poll of a source.",
                                                   ("source",)),
    "usagebot_source_data_age_seconds": Definition("collected", "Seconds since a source last brought new data.",
                                                   ("source",)),
    "usagebot_source_stale": Definition("collected", "1 while a source is marked stale.", ("source",)),
    "usagebot_ingest_requests_total": Definition("counter", "Push-ingest requests by HTTP status.", ("status",)),
    "usagebot_ingest_events_total": Definition("counter", "Pushed events by result (accepted, duplicate).",
                                               ("result",)),
    "usagebot_evaluations_total": Definition("counter", "Evaluation runs by reason (bucket closed, late data).",
                                             ("reason",)),
    "usagebot_evaluation_seconds": Definition("histogram", "Duration of one evaluation run.", ("reason",)),
    "usagebot_alerts_total": Definition("counter", "Alert transitions published, by rule and event (fired, "
                                        "renotified, resolved).", ("rule", "event")),
    "usagebot_deliveries_total": Definition("counter", "Outbox deliveries by result (sent, failed, dead, deferred, lost).",
                                            ("result",)),
    "usagebot_outbox_rows": Definition("collected", "Outbox rows by status.", ("status",)),
    "usagebot_crm_parked_records": Definition("collected", "CRM records refused for good, not sent until "
                                              "`usagebot crm retry`."),
    "usagebot_crm_parked_tasks": Definition("collected", "Salesforce Tasks refused for good, not sent until "
                                            "`usagebot crm retry`."),
    "usagebot_job_runs_total": Definition("counter", "Scheduled job runs by job and result (ok, error, skipped).",
                                          ("job", "result")),
    "usagebot_job_seconds": Definition("histogram", "Duration of a scheduled job run.", ("job",)),
    "usagebot_errors_total": Definition("counter", "Errors by component (a job id, http, collector, reload).",
                                        ("component",)),
    "usagebot_http_requests_total": Definition("counter", "HTTP responses by route and status code (every response, "
                                               "including those refused before the body was read).",
                                               ("route", "status")),
    "usagebot_http_connections": Definition("collected", "Open HTTP connections (at most [service] "
                                            "max_connections)."),
    "usagebot_http_request_seconds": Definition("histogram", "Time to answer an HTTP request routed to the "
                                                "application.", ("route",)),
    "usagebot_rules_loaded": Definition("gauge", "Rules in force (after the last successful load or reload)."),
    "usagebot_rules_reloads_total": Definition("counter", "Rule / template reloads by result (ok, invalid).",
                                               ("result",)),
}


@dataclass(frozen=True)
class Sample:
    name: str
    value: float
    labels: Mapping[str, str]


def _str_labels(labels: Mapping[str, object]) -> dict[str, str]:
    # label values are ids, but a secret must not reach a scrape even through one (rules.config.redaction)
    return {k: mask(str(v)) for k, v in labels.items()}


class _Collected:
    """A prometheus_client collector that turns the service's Sample collectors into gauge families."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(n, d.help, labels=d.labels) for n, d in DEFINITIONS.items() if d.kind == "collected"]

    def collect(self) -> Iterator[Metric]:
        families = {n: GaugeMetricFamily(n, d.help, labels=d.labels)
                    for n, d in DEFINITIONS.items() if d.kind == "collected"}
        for collect in list(self._owner._collectors):
            try:
                samples = list(collect())
            except Exception:  # a failing collector (database down) must not break the scrape
                self._owner.inc("usagebot_errors_total", component="collector")
                continue
            for s in samples:
                fam = families.get(s.name)
                if fam is None:
                    raise KeyError(f"metric {s.name!r} is not declared as collected in bot.service.metrics.DEFINITIONS")
                d = DEFINITIONS[s.name]
                fam.add_metric([str(s.labels.get(k, "")) for k in d.labels], float(s.value))
        yield from families.values()


class Metrics:
    """The service's metrics: one registry, the declared metrics, process/platform/GC collectors."""

    def __init__(self, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._collectors: list[Callable[[], Iterable[Sample]]] = []
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        # Collected gauges first: a failing collector's usagebot_errors_total shows in the same scrape.
        self.registry.register(_Collected(self))
        for name, d in DEFINITIONS.items():
            if d.kind == "counter":
                self._metrics[name] = Counter(name, d.help, d.labels, registry=self.registry)
            elif d.kind == "gauge":
                self._metrics[name] = Gauge(name, d.help, d.labels, registry=self.registry)
            elif d.kind == "histogram":
                b = HTTP_BUCKETS if name.startswith("usagebot_http_") else tuple(buckets)
                self._metrics[name] = Histogram(name, d.help, d.labels, buckets=b, registry=self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def _get(self, name: str, kind: str, labels: Mapping[str, object]) -> object:
        d = DEFINITIONS.get(name)
        if d is None or d.kind != kind:
            raise KeyError(f"metric {name!r} is not declared as a {kind} in bot.service.metrics.DEFINITIONS")
        m = self._metrics[name]
        return m.labels(**_str_labels(labels)) if d.labels else m

    def inc(self, name: str, value: float = 1.0, **labels: object) -> None:
        self._get(name, "counter", labels).inc(value)  # type: ignore[attr-defined]

    def set(self, name: str, value: float, **labels: object) -> None:
        self._get(name, "gauge", labels).set(value)  # type: ignore[attr-defined]

    def observe(self, name: str, value: float, **labels: object) -> None:
        self._get(name, "histogram", labels).observe(value)  # type: ignore[attr-defined]

    def initialise(self, name: str, label_sets: Iterable[Mapping[str, object]]) -> None:
        """Create the series of these label sets at 0 (a counter's or histogram's known label values)."""
        d = DEFINITIONS[name]
        for labels in label_sets:
            self._get(name, d.kind, labels)

    def value(self, name: str, **labels: object) -> float:
        """Current value of a counter or gauge (0 when never set); for tests and readiness."""
        v = self.registry.get_sample_value(name, _str_labels(labels))
        return 0.0 if v is None else v

    def count(self, name: str, **labels: object) -> int:
        """Observations of a histogram."""
        v = self.registry.get_sample_value(f"{name}_count", _str_labels(labels))
        return 0 if v is None else int(v)

    def add_collector(self, collect: Callable[[], Iterable[Sample]]) -> None:
        with self._lock:
            self._collectors.append(collect)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (body, content type): Prometheus text 0.0.4, or OpenMetrics when `accept` asks."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
