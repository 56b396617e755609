"""The Prometheus text format rendered by bot.metrics, and structured logs."""

from __future__ import annotations

import io
import json
import logging

import pytest

from bot.logs import JsonFormatter, setup_logging
from bot.metrics import Metrics, Sample


def test_counters_gauges_histograms_and_collectors_render_in_the_text_format() -> None:
    m = Metrics(buckets=(0.1, 1.0))
    m.inc("usagebot_alerts_total", rule='r"1', event="fired")
    m.inc("usagebot_alerts_total", 2, rule='r"1', event="fired")
    m.set("usagebot_leader", 1)
    m.observe("usagebot_evaluation_seconds", 0.5, reason="bucket_closed")
    m.observe("usagebot_evaluation_seconds", 3.0, reason="bucket_closed")
    m.add_collector(lambda: [Sample("usagebot_source_poll_lag_seconds", 12, {"source": "api"})])
    text = m.render()
    assert '# TYPE usagebot_alerts_total counter\nusagebot_alerts_total{event="fired",rule="r\\"1"} 3\n' in text
    assert "usagebot_leader 1\n" in text
    assert ('usagebot_evaluation_seconds_bucket{reason="bucket_closed",le="0.1"} 0\n'
            'usagebot_evaluation_seconds_bucket{reason="bucket_closed",le="1"} 1\n') in text
    assert 'usagebot_evaluation_seconds_bucket{reason="bucket_closed",le="+Inf"} 2' in text
    assert 'usagebot_evaluation_seconds_sum{reason="bucket_closed"} 3.5' in text
    assert 'usagebot_source_poll_lag_seconds{source="api"} 12' in text
    assert text.endswith("\n")


def test_undeclared_metrics_and_failing_collectors() -> None:
    m = Metrics()
    with pytest.raises(KeyError, match="not declared as a counter"):
        m.inc("usagebot_made_up_total")

    def broken() -> list[Sample]:
        raise RuntimeError("database down")

    m.add_collector(broken)
    assert "usagebot_errors_total{component=\"collector\"} 1" in m.render()


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
