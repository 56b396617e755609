"""The HTTP server over real sockets: limits, timeouts and refusals before the body is read.

Every case is a raw TCP conversation with bot.service.http_server (waitress underneath), the way a hostile
or broken client would talk to it: a negative or oversized Content-Length, an unauthenticated body,
slow-loris headers, half-open connections, more connections than allowed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping

import httpx
import pytest

from bot.service.http_server import HttpLimits, HttpServer, Request, Response, Route
from bot.service.metrics import Metrics

TOKEN = "s3cret-token"


def _auth(headers: Mapping[str, str]) -> Response | None:
    return None if headers.get("authorization") == f"Bearer {TOKEN}" else Response.json(401, {"error": "no"})


class Echo:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, req: Request) -> Response:
        self.bodies.append(req.body)
        return Response.json(200, {"bytes": len(req.body)})


def _serve(limits: HttpLimits, echo: Echo | None = None) -> tuple[HttpServer, Metrics, Echo]:
    echo = echo or Echo()
    metrics = Metrics()
    routes = [Route("GET", "/healthz", lambda r: Response.json(200, {"status": "ok"}), "healthz"),
              Route("POST", "/ingest", echo, "ingest", max_body=1000, authorize=_auth)]
    srv = HttpServer("127.0.0.1", 0, routes, limits, metrics=metrics)
    srv.start()
    return srv, metrics, echo


@pytest.fixture
def server() -> Iterator[tuple[HttpServer, Metrics, Echo]]:
    srv, metrics, echo = _serve(HttpLimits(read_timeout=2, idle_timeout=2, max_connections=400, threads=2))
    try:
        yield srv, metrics, echo
    finally:
        srv.stop()


@pytest.fixture
def patient() -> Iterator[tuple[HttpServer, Metrics, Echo]]:
    """A server whose read and idle timeouts (60 s) are far longer than the client waits (20 s).

    An answer that arrives at all then proves the server refused without waiting for the body: the
    old server, which read until the client closed or its read timeout, gave the client nothing
    before the client's own timeout. No wall-clock bound is asserted (the machine may be loaded).
    """
    srv, metrics, echo = _serve(HttpLimits(read_timeout=60, idle_timeout=60, max_connections=400, threads=2))
    try:
        yield srv, metrics, echo
    finally:
        srv.stop()


def _connect(srv: HttpServer, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    return s


def _read_response(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket times out)."""
    chunks = []
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    except TimeoutError:
        pass
    return b"".join(chunks)


def _post_headers(length: str, auth: bool = True, extra: str = "") -> bytes:
    a = f"Authorization: Bearer {TOKEN}\r\n" if auth else ""
    return (f"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{a}"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


@pytest.mark.parametrize("length", ["-1", "+5", "1e3", "5, 5", "0x10", " "])
def test_a_malformed_content_length_is_refused_at_once(patient, length: str) -> None:
    srv, metrics, echo = patient
    s = _connect(srv, timeout=20)
    s.sendall(_post_headers(length))  # and then nothing: the old server read until the client closed
    resp = _read_response(s)
    assert resp.startswith(b"HTTP/1.1 400 "), resp
    assert echo.bodies == []
    assert metrics.value("usagebot_http_requests_total", route="unknown", status=400) >= 1


def test_an_oversized_body_is_refused_before_it_is_sent(server) -> None:
    srv, metrics, echo = server
    s = _connect(srv)
    s.sendall(_post_headers("1000000000"))
    resp = _read_response(s)
    assert resp.startswith(b"HTTP/1.1 413 ") and b"larger than 1000" in resp
    assert b"Connection: close" in resp
    assert metrics.value("usagebot_http_requests_total", route="ingest", status=413) == 1


def test_authentication_is_checked_before_the_body_is_read(patient) -> None:
    srv, metrics, echo = patient
    s = _connect(srv, timeout=20)
    s.sendall(_post_headers("1000", auth=False))  # the body is never sent: the answer must not wait for it
    resp = _read_response(s)
    assert resp.startswith(b"HTTP/1.1 401 "), resp
    # Expect: 100-continue is not answered with "100 Continue" when the request is refused anyway
    s = _connect(srv, timeout=20)
    s.sendall(_post_headers("1000", auth=False, extra="Expect: 100-continue\r\n"))
    resp = _read_response(s)
    assert resp.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in resp
    assert metrics.value("usagebot_http_requests_total", route="ingest", status=401) == 2
    assert echo.bodies == []


def test_a_good_request_and_keep_alive(server) -> None:
    srv, metrics, echo = server
    with httpx.Client(base_url=f"http://127.0.0.1:{srv.port}") as c:
        for _ in range(3):
            r = c.post("/ingest", content=b"x" * 1000, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and r.json() == {"bytes": 1000}
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/nope").status_code == 404
        r = c.post("/healthz", content=b"")
        assert r.status_code == 405 and r.headers["allow"] == "GET"
        assert c.head("/healthz").status_code == 200
        assert c.post("/ingest", content=iter([b"ab"]), headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 411
    assert metrics.value("usagebot_http_requests_total", route="ingest", status=200) == 3
    assert metrics.value("usagebot_http_requests_total", route="unknown", status=404) == 1
    assert metrics.value("usagebot_http_requests_total", route="unknown", status=405) == 1
    assert metrics.value("usagebot_http_requests_total", route="ingest", status=411) == 1
    assert metrics.count("usagebot_http_request_seconds", route="ingest") == 3


def test_a_slow_loris_is_cut_off_after_read_timeout_while_others_are_served(server) -> None:
    srv, metrics, echo = server
    s = _connect(srv, timeout=10)
    head = _post_headers("10")
    began = time.monotonic()
    closed_after = None
    for i in range(len(head)):  # one byte every 0.2 s: the idle timeout alone would never fire
        try:
            s.sendall(head[i:i + 1])
        except OSError:
            closed_after = time.monotonic() - began
            break
        if i == 3:
            assert httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=2).status_code == 200
        time.sleep(0.2)
        if time.monotonic() - began > 8:
            break
    if closed_after is None:
        s.settimeout(3)
        assert _read_response(s) == b""  # the server closed it without an answer
        closed_after = time.monotonic() - began
    assert closed_after < 6, closed_after  # read_timeout 2 s (+ the 1 s maintenance interval, + slack)
    assert echo.bodies == []


def test_half_open_connections_hold_no_threads_and_are_closed_when_idle(server) -> None:
    srv, metrics, echo = server
    threads_before = threading.active_count()
    conns = [_connect(srv) for _ in range(300)]  # connect and send nothing
    try:
        began = time.monotonic()
        r = httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=5)
        assert r.status_code == 200 and time.monotonic() - began < 2
        assert threading.active_count() <= threads_before + 1  # no thread per connection
        deadline = time.monotonic() + 8
        while srv.open_connections > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert srv.open_connections == 0  # idle_timeout 2 s closed them all
        conns[0].settimeout(1)
        assert conns[0].recv(10) == b""
    finally:
        for c in conns:
            c.close()


def test_at_most_max_connections_are_open_and_the_rest_wait() -> None:
    srv, metrics, _ = _serve(HttpLimits(read_timeout=2, idle_timeout=2, max_connections=20, threads=2))
    try:
        conns = [_connect(srv) for _ in range(40)]
        time.sleep(0.5)
        assert srv.open_connections <= 20
        began = time.monotonic()
        r = httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=10)  # served once idle ones are closed
        assert r.status_code == 200 and time.monotonic() - began < 8
        for c in conns:
            c.close()
    finally:
        srv.stop()


def test_oversized_headers_are_refused() -> None:
    srv, metrics, _ = _serve(HttpLimits(max_header_bytes=4096))
    try:
        s = _connect(srv)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        resp = _read_response(s)
        assert resp.split(b" ", 2)[1] == b"431"
        assert metrics.value("usagebot_http_requests_total", route="unknown", status=431) == 1
    finally:
        srv.stop()


def test_a_failing_handler_is_a_500_without_a_traceback() -> None:
    def boom(req: Request) -> Response:
        raise RuntimeError("secret internals")

    metrics = Metrics()
    errors = []
    srv = HttpServer("127.0.0.1", 0, [Route("GET", "/x", boom, "x")], metrics=metrics,
                     on_error=lambda: errors.append(1))
    srv.start()
    try:
        r = httpx.get(f"http://127.0.0.1:{srv.port}/x")
        assert r.status_code == 500 and "secret internals" not in r.text and "Traceback" not in r.text
        assert errors == [1] and metrics.value("usagebot_http_requests_total", route="x", status=500) == 1
    finally:
        srv.stop()


def test_paths_are_utf_8_and_a_prefix_route_answers_other_methods_405() -> None:
    """WSGI hands the path over as latin-1 characters: a route saw /caf%C3%A9 as 'cafÃ©'. A method
    the prefix route (the web UI) does not take was a 404 'no such path' for a path it serves."""
    seen: list[str] = []

    def page(req: Request) -> Response:
        seen.append(req.path)
        return Response.json(200, {"path": req.path})

    srv = HttpServer("127.0.0.1", 0, [Route("GET", "/", page, "web", prefix=True),
                                      Route("POST", "/logout", page, "web")])
    srv.start()
    base = f"http://127.0.0.1:{srv.port}"
    try:
        assert httpx.get(f"{base}/accounts/caf%C3%A9-%F0%9F%98%80").json() == {"path": "/accounts/café-😀"}
        assert httpx.get(f"{base}/accounts/%FF").json() == {"path": "/accounts/\ufffd"}
        for method in ("DELETE", "PUT", "OPTIONS"):
            r = httpx.request(method, f"{base}/alerts")
            assert r.status_code == 405 and r.headers["Allow"] == "GET", method
        assert httpx.get(f"{base}/logout").status_code == 405
        assert seen == ["/accounts/café-😀", "/accounts/\ufffd"]
    finally:
        srv.stop()


def test_every_status_has_its_reason_phrase() -> None:
    """302, 303, 403 and 415 were sent as '302 Status' (the phrase table knew eleven codes)."""
    from bot.service.http_server import status_line

    assert [status_line(s) for s in (302, 303, 403, 415, 413, 599)] == [
        "302 Found", "303 See Other", "403 Forbidden", "415 Unsupported Media Type", "413 Content Too Large",
        "599 Status"]
    srv = HttpServer("127.0.0.1", 0, [Route("GET", "/x", lambda r: Response(302, b"", {"Location": "/"}), "x")])
    srv.start()
    try:
        with _connect(srv) as s:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _read_response(s).startswith(b"HTTP/1.1 302 Found\r\n")
    finally:
        srv.stop()
