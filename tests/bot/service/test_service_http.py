"""The running service's HTTP endpoints against hostile clients (real sockets, the real Service)."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.config.app import load_config
from bot.serve.service import Service
from integrations.console import ConsoleNotifier
from tests.bot.service.test_service import DAY, SECRET, T0, _config


def _service(tmp_path: Path, extra: str = "", env: dict[str, str] | None = None) -> Service:
    cfg = load_config(_config(tmp_path, f"sqlite:///{tmp_path}/svc.db", extra),
                      env={"INGEST_SECRET": SECRET, **(env or {})})
    svc = Service(cfg, clock=lambda: T0 + 10 * DAY + 60, notifier=ConsoleNotifier(out=io.StringIO()))
    svc.start(scheduler=False)
    return svc


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = _service(tmp_path)
    try:
        yield svc
    finally:
        svc.stop()


def _raw(svc: Service, data: bytes, wait: float = 3.0) -> bytes:
    assert svc.http is not None
    s = socket.create_connection(("127.0.0.1", svc.http.port), timeout=wait)
    s.sendall(data)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except TimeoutError:
        pass
    s.close()
    return out


def _metrics(svc: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert svc.http is not None
    text = httpx.get(f"http://127.0.0.1:{svc.http.port}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_ingest_with_content_length_minus_one_is_refused_at_once(service: Service) -> None:
    began = time.monotonic()
    resp = _raw(service, (f"POST /ingest/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n"
                          "Content-Length: -1\r\n\r\n").encode())
    assert resp.startswith(b"HTTP/1.1 400 ") and time.monotonic() - began < 2


def test_ingest_refuses_a_wrong_token_before_reading_the_body(service: Service) -> None:
    began = time.monotonic()  # headers only: a server that reads the body first waits until the timeout
    resp = _raw(service, b"POST /ingest/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                         b"Content-Length: 900000\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 401 ") and b"www-authenticate: bearer" in resp.lower()
    assert time.monotonic() - began < 2
    resp = _raw(service, f"POST /ingest/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n"
                         "Content-Length: 5000000\r\n\r\n".encode())
    assert resp.startswith(b"HTTP/1.1 413 ")
    m = _metrics(service)
    assert m[("usagebot_http_requests_total", (("route", "ingest"), ("status", "401")))] == 1
    assert m[("usagebot_http_requests_total", (("route", "ingest"), ("status", "413")))] == 1
    assert m[("usagebot_ingest_requests_total", (("status", "401"),))] == 1


SLACK = """
[slack]
bot_token = "xoxb-1"
signing_secret = "shh"
"""


def test_slack_http_mode_needs_fresh_signature_headers_before_the_body(tmp_path: Path) -> None:
    svc = _service(tmp_path, SLACK)
    try:
        head = "POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        began = time.monotonic()
        resp = _raw(svc, (head + "Content-Length: 100000\r\n\r\n").encode())
        assert resp.startswith(b"HTTP/1.1 401 ") and b"X-Slack-Signature" in resp
        stale = int(time.time()) - 3600
        resp = _raw(svc, (head + f"X-Slack-Request-Timestamp: {stale}\r\nX-Slack-Signature: v0=ab\r\n"
                                 "Content-Length: 100000\r\n\r\n").encode())
        assert resp.startswith(b"HTTP/1.1 401 ") and time.monotonic() - began < 3
        # fresh headers with a forged signature: the body is read, then slack-bolt refuses it
        body = b"command=%2Fusage&text=acme"
        r = httpx.post(f"http://127.0.0.1:{svc.http.port}/slack/events", content=body,  # type: ignore[union-attr]
                       headers={"Content-Type": "application/x-www-form-urlencoded",
                                "X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=00"})
        assert r.status_code == 401
        m = _metrics(svc)
        assert m[("usagebot_http_requests_total", (("route", "slack"), ("status", "401")))] == 3
    finally:
        svc.stop()


def test_metrics_have_process_metrics_and_initialised_series(service: Service) -> None:
    m = _metrics(service)
    names = {name for name, _ in m}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "python_gc_collections_total",
            "python_info", "usagebot_http_connections"} <= names
    # known label values exist before their first use
    assert m[("usagebot_source_polls_total", (("result", "error"), ("source", "drops")))] == 0
    assert m[("usagebot_deliveries_total", (("result", "dead"),))] == 0
    assert m[("usagebot_job_runs_total", (("job", "evaluate"), ("result", "error")))] == 0
    assert m[("usagebot_alerts_total", (("event", "fired"), ("rule", "calls-spike")))] == 0
    assert m[("usagebot_ingest_events_total", (("result", "duplicate"),))] == 0
    assert m[("usagebot_http_requests_total", (("route", "readyz"), ("status", "200")))] == 0
    assert ("usagebot_errors_total", (("component", "http"),)) in m
    openmetrics = httpx.get(f"http://127.0.0.1:{service.http.port}/metrics",  # type: ignore[union-attr]
                            headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
