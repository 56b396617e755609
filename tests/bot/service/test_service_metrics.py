"""The Prometheus text format rendered by bot.service.metrics, and structured logs."""

from __future__ import annotations

import io
import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.service.logs import JsonFormatter, setup_logging
from bot.service.metrics import Metrics, Sample


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = m.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def test_counters_gauges_histograms_and_collectors_render_in_the_text_format() -> None:
    m = Metrics(buckets=(0.1, 1.0))
    m.inc("usagebot_alerts_total", rule='r"1', event="fired")
    m.inc("usagebot_alerts_total", 2, rule='r"1', event="fired")
    m.set("usagebot_leader", 1)
    m.observe("usagebot_evaluation_seconds", 0.5, reason="bucket_closed")
    m.observe("usagebot_evaluation_seconds", 3.0, reason="bucket_closed")
    m.add_collector(lambda: [Sample("usagebot_source_poll_lag_seconds", 12, {"source": "api"})])
    text = m.render()[0].decode()
    assert '# TYPE usagebot_alerts_total counter\n' in text and 'rule="r\\"1"' in text
    s = _samples(m)
    assert s[("usagebot_alerts_total", (("event", "fired"), ("rule", 'r"1')))] == 3
    assert s[("usagebot_leader", ())] == 1
    assert s[("usagebot_evaluation_seconds_bucket", (("le", "0.1"), ("reason", "bucket_closed")))] == 0
    assert s[("usagebot_evaluation_seconds_bucket", (("le", "1.0"), ("reason", "bucket_closed")))] == 1
    assert s[("usagebot_evaluation_seconds_bucket", (("le", "+Inf"), ("reason", "bucket_closed")))] == 2
    assert s[("usagebot_evaluation_seconds_sum", (("reason", "bucket_closed"),))] == 3.5
    assert s[("usagebot_source_poll_lag_seconds", (("source", "api"),))] == 12
    assert ("process_resident_memory_bytes", ()) in s and ("python_gc_objects_collected_total", (("generation", "0"),)) in s
    assert text.endswith("\n")


def test_undeclared_metrics_and_failing_collectors() -> None:
    m = Metrics()
    with pytest.raises(KeyError, match="not declared as a counter"):
        m.inc("usagebot_made_up_total")

    def broken() -> list[Sample]:
        raise RuntimeError("database down")

    m.add_collector(broken)
    assert _samples(m)[("usagebot_errors_total", (("component", "collector"),))] == 1


def test_initialised_label_sets_exist_before_first_use() -> None:
    m = Metrics()
    m.initialise("usagebot_deliveries_total", [{"result": "dead"}])
    assert _samples(m)[("usagebot_deliveries_total", (("result", "dead"),))] == 0


def test_every_declared_metric_is_documented() -> None:
    from pathlib import Path

    from bot.service.metrics import DEFINITIONS

    doc = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    missing = [name for name in DEFINITIONS if f"`{name}`" not in doc]
    assert missing == []


def test_json_log_lines_carry_extra_fields() -> None:
    stream = io.StringIO()
    handler = setup_logging("json", "info", stream)
    try:
        logging.getLogger("bot.test").info("polled %s", "api", extra={"source": "api", "rows": 3})
        logging.getLogger("bot.test").debug("hidden")
    finally:
        logging.getLogger().removeHandler(handler)
    [line] = stream.getvalue().splitlines()
    rec = json.loads(line)
    assert (rec["level"], rec["logger"], rec["message"], rec["source"], rec["rows"]) == (
        "info", "bot.test", "polled api", "api", 3)
    assert rec["ts"].endswith("Z")
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x", "obj": object()})), str)
