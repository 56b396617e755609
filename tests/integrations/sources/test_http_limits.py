"""Resource bounds of the HTTP sources (http_json, openmeter, stripe_meter share http_fetch): an endless
answer, a drip-fed answer, a gzip bomb, a lying Content-Length and a poll that outlives its deadline all
end with a clear error, within the configured limits, and store nothing."""

from __future__ import annotations

import functools
import gzip
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from bot.service.polling import poll_source
from integrations.sources.http_json import HttpJsonSource
from integrations.sources.openmeter import OpenMeterSource
from integrations.sources.stripe_meter import StripeMeterSource
from tests.fakes.http import FakeServer
from tests.integrations.sources.helpers import T0, config_problems, count, source_config

Behaviour = Callable[[BaseHTTPRequestHandler], None]


class RawHttp:
    """A local server whose every answer is written by hand (for peers that misbehave mid-body)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.hits = 0
        outer = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

            def do_GET(self) -> None:  # noqa: N802
                outer.hits += 1
                behaviour(self)  # a client that gives up on us is the point: FakeServer stays quiet

        self.server = FakeServer(("127.0.0.1", 0), _H)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str = "/usage") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def raw() -> Iterator[Callable[[Behaviour], RawHttp]]:
    servers: list[RawHttp] = []

    def make(b: Behaviour) -> RawHttp:
        servers.append(RawHttp(b))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def endless(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    chunk = b'{"items": [' + b'{"a": "acme", "m": "x", "v": 1, "t": "2026-11-01T00:00:00Z"},' * 1000
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        chunk = b'{"a": "acme", "m": "x", "v": 1, "t": "2026-11-01T00:00:00Z"},' * 1000


def drip(h: BaseHTTPRequestHandler) -> None:
    body = b'{"items": []}' + b" " * 1000
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    for i in range(len(body)):  # one byte every 0.2 s: each read is well within `timeout`
        h.wfile.write(body[i:i + 1])
        h.wfile.flush()
        time.sleep(0.2)


def drip_headers(h: BaseHTTPRequestHandler) -> None:
    """The status line and then headers one byte every 0.2 s (1,000 bytes: 200 s): every read is well
    within `timeout`, and no header is complete before the request's deadline."""
    head = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * 1000 + b"\r\nContent-Length: 2\r\n\r\n{}"
    for i in range(len(head)):
        h.wfile.write(head[i:i + 1])
        h.wfile.flush()
        time.sleep(0.2)


@functools.cache
def _bomb() -> bytes:
    """64 MiB of JSON in ~64 KiB of gzip, compressed once (compressing it in the handler took longer
    than the source's 1 s timeout on a loaded machine)."""
    return gzip.compress(b'{"items": [' + b" " * (64 * 1024 * 1024) + b"]}", compresslevel=9)


def gzip_bomb(h: BaseHTTPRequestHandler) -> None:
    body = _bomb()
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Encoding", "gzip")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def huge_length(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(50 * 1024 ** 3))
    h.end_headers()
    h.wfile.write(b'{"items": []')


def slow_503(h: BaseHTTPRequestHandler) -> None:
    time.sleep(0.6)
    h.send_response(503)
    h.send_header("Content-Length", "2")
    h.send_header("Retry-After", "0")
    h.end_headers()
    h.wfile.write(b"no")


def _toml(url: str, limits: str) -> str:
    retries = "" if "retries" in limits else "retries = 0"
    return f"""
[[sources]]
id = "billing"
type = "http_json"
url = "{url}"
records = "items"
{retries}
backoff = "0s"
timeout = "1s"
{limits}
[sources.fields]
account = "a"
metric = "m"
value = "v"
timestamp = "t"
"""


def _poll(engine: Engine, url: str, limits: str) -> tuple[Any, float]:
    src = HttpJsonSource(source_config(_toml(url, limits)))
    started = time.monotonic()
    try:
        report = poll_source(engine, src, T0)
    finally:
        src.close()
    return report, time.monotonic() - started


def test_an_endless_response_is_cut_at_max_response_bytes(engine: Engine, raw) -> None:  # type: ignore[no-untyped-def]
    srv = raw(endless)
    report, took = _poll(engine, srv.url(), "max_response_bytes = 2000000")
    assert not report.ok and took < 10
    assert "passed max_response_bytes (1.9 MiB) and was cut off" in (report.error or "")
    assert count(engine, "usage_points") == 0


def test_a_drip_feed_is_stopped_at_the_request_deadline(engine: Engine, raw) -> None:  # type: ignore[no-untyped-def]
    srv = raw(drip)
    report, took = _poll(engine, srv.url(), 'request_deadline = "2s"')
    assert not report.ok and took < 8  # the whole drip takes 200 s; the deadline 2 s (room for load)
    assert "the response was still arriving after 2s" in (report.error or "")


def test_a_drip_fed_status_line_and_headers_are_stopped_at_the_request_deadline(engine: Engine, raw) -> None:  # type: ignore[no-untyped-def]
    """httpx's timeouts are per read: before, a peer dripping its headers held the poll until the
    last header byte (200 s here), past request_deadline (only checked between body chunks)."""
    srv = raw(drip_headers)
    report, took = _poll(engine, srv.url(), 'request_deadline = "2s"')
    assert not report.ok and took < 8  # the deadline 2 s (room for load)
    assert "no status line and headers within 2s; stopped" in (report.error or ""), report.error
    assert count(engine, "usage_points") == 0


def test_a_gzip_bomb_is_cut_after_decompression(engine: Engine, raw) -> None:  # type: ignore[no-untyped-def]
    _bomb()  # compressed before the poll starts
    srv = raw(gzip_bomb)
    report, _ = _poll(engine, srv.url(), "max_response_bytes = 1048576")
    assert not report.ok and "passed max_response_bytes (1.0 MiB)" in (report.error or "")


def test_a_declared_length_over_the_cap_is_refused_before_reading(engine: Engine, raw) -> None:  # type: ignore[no-untyped-def]
    srv = raw(huge_length)
    report, took = _poll(engine, srv.url(), "")
    assert not report.ok and took < 10  # reading 50 GiB would not end (room for load)
    assert "the response is 51200.0 MiB (Content-Length), more than max_response_bytes (32.0 MiB)" in report.error


def test_retries_stop_at_the_poll_deadline(engine: Engine, raw) -> None:  # type: ignore[no-untyped-def]
    srv = raw(slow_503)
    report, took = _poll(engine, srv.url(), 'poll_deadline = "2s"\nretries = 20')
    assert not report.ok and took < 8  # the 21 attempts of 0.6 s each would take 12.6 s; room for load
    assert srv.hits <= 5
    assert "poll_deadline (2s)" in (report.error or "")


def test_metering_sources_have_the_same_limits(raw) -> None:  # type: ignore[no-untyped-def]
    from integrations.sources.base import PollContext, SourceError

    srv = raw(endless)
    om = OpenMeterSource(source_config(f"""
[[sources]]
id = "om"
type = "openmeter"
url = "{srv.url('')}"
meters = {{ api_requests = "api_calls" }}
max_response_bytes = 100000
retries = 0
"""))
    st = StripeMeterSource(source_config(f"""
[[sources]]
id = "st"
type = "stripe_meter"
url = "{srv.url('')}"
api_key = "sk_test_123456789"
meters = {{ mtr_1 = "api_calls" }}
customers = {{ acme = "cus_1" }}
max_response_bytes = 100000
retries = 0
"""))
    for src in (om, st):
        with pytest.raises(SourceError, match=r"passed max_response_bytes \(100,000 bytes\)"):
            list(src.poll(PollContext(src.id, T0)))
        src.close()


def test_limit_keys_are_validated() -> None:
    problems = "\n".join(config_problems(_toml("http://x", 'max_response_bytes = 10\nrequest_deadline = "0s"\n'
                                                             'poll_deadline = "soon"')))
    assert "sources[0].max_response_bytes: must be >= 1024 (got 10)" in problems
    assert "sources[0].request_deadline: must be at least 1s" in problems
    assert "sources[0].poll_deadline:" in problems
