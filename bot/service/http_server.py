"""The service's HTTP server: waitress (a production WSGI server) with usagebot's routes and limits.

Routes are plain functions Request -> Response (the Slack app's WSGI handler
and the push endpoint are mounted the same way), each with its own body limit
and an optional `authorize` check on the headers. Everything a client can
abuse is bounded before the application runs:

- **Before the body is read** (as soon as the headers are in): an unknown path
  (404) or method (405), a POST without Content-Length (411; chunked bodies
  are refused too), a Content-Length over the route's limit (413) and a
  failing `authorize` (401, e.g. a wrong ingest token or missing Slack
  signature headers) are answered at once and the connection is closed; the
  body is never buffered. A malformed Content-Length (`-1`, `1e3`, `5, 5`)
  is a 400 from waitress's parser.
- **Connections**: at most `max_connections` open at once (waitress stops
  accepting beyond it); one that sends nothing for `idle_timeout` is closed;
  a request that is not completely received within `read_timeout` of its
  first byte (slow-loris) is dropped. Waiting connections hold a socket, not
  a thread: waitress reads them in one I/O thread and only complete requests
  reach the `threads` worker threads.
- **Headers** are limited to `max_header_bytes` (431 beyond).

Every response is counted in usagebot_http_requests_total{route, status},
the refusals above included; usagebot_http_connections is the number of open
connections at scrape time.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import Error

from bot.service.metrics import Metrics

log = logging.getLogger(__name__)

UNKNOWN_ROUTE = "unknown"  # metrics label of requests for no configured path (or unparseable ones)
_STATUS_TEXT = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                411: "Length Required", 413: "Content Too Large", 431: "Request Header Fields Too Large",
                500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any) -> Response:
        return cls(status, (json.dumps(data) + "\n").encode(), {"Content-Type": "application/json"})

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Response:
        return cls(status, text.encode(), {"Content-Type": content_type})


Handler = Callable[[Request], Response]
Authorize = Callable[[Mapping[str, str]], Response | None]  # headers (lower-case) -> a refusal, or None


@dataclass(frozen=True)
class Route:
    method: str  # GET routes also answer HEAD
    path: str
    handler: Handler
    name: str  # the `route` label of the HTTP metrics
    max_body: int = 0  # bytes; 0 = no body accepted
    authorize: Authorize | None = None  # checked on the headers, before the body is read
    prefix: bool = False  # also every path under `path` (the web UI); exact routes win


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 500
    read_timeout: float = 30.0  # a request must be received whole within this long of its first byte
    idle_timeout: float = 60.0  # a connection with no request in progress is closed after this long
    threads: int = 8  # worker threads running the routes
    max_header_bytes: int = 65_536


def status_line(status: int) -> str:
    """'302 Found', '415 Unsupported Media Type': every status its reason phrase (not '302 Status')."""
    try:
        phrase = _STATUS_TEXT.get(status) or HTTPStatus(status).phrase
    except ValueError:  # a status no standard names
        phrase = "Status"
    return f"{status} {phrase}"


def request_path(wsgi_path: str) -> str:
    """The request's path as text: WSGI (PEP 3333) hands it over percent-decoded with each byte as one
    latin-1 character, so /accounts/caf%C3%A9 would arrive as 'cafÃ©'; browsers and our own links
    percent-encode UTF-8. Bytes that are not UTF-8 become U+FFFD (such a path names nothing)."""
    try:
        return wsgi_path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # already text (a server that decoded it)
        return wsgi_path


def wsgi_route(app: Callable[..., Any]) -> Handler:
    """Mount a WSGI application (e.g. slack-bolt's SlackRequestHandler) as a route."""

    def handle(req: Request) -> Response:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": req.method, "PATH_INFO": req.path.encode("utf-8").decode("latin-1"),
            "QUERY_STRING": urlencode(req.query, doseq=True), "SERVER_NAME": "usagebot", "SERVER_PORT": "0",
            "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_TYPE": req.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(req.body)), "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(req.body), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
            "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        for k, v in req.headers.items():
            if k not in ("content-type", "content-length"):
                environ["HTTP_" + k.upper().replace("-", "_")] = v
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            started["status"], started["headers"] = status, headers
            return lambda _data: None

        chunks = app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return Response(int(str(started.get("status", "500")).split()[0]), body, dict(started.get("headers", [])))

    return handle


class _Refused(Error):
    """A refusal decided on the headers (before the body); rendered as the route's JSON response."""

    def __init__(self, response: Response) -> None:
        super().__init__("")
        self.response = response
        self.code = response.status


def _header_map(wsgi_headers: Mapping[str, str]) -> dict[str, str]:
    """waitress's CONTENT_TYPE / X_SLACK_SIGNATURE keys -> content-type / x-slack-signature."""
    return {k.lower().replace("_", "-"): v for k, v in wsgi_headers.items()}


class ListenError(OSError):
    """The server cannot listen on host:port (a port in use or out of range, an address that is not
    this machine's or no address at all); the message says which, in one line."""


class HttpServer:
    def __init__(self, host: str, port: int, routes: Sequence[Route], limits: HttpLimits | None = None,
                 metrics: Metrics | None = None, on_error: Callable[[], None] | None = None) -> None:
        """Binds host:port at once; ListenError when it cannot (the socket layer would wrap a port past
        65535 silently: 70000 listened on 4464)."""
        self.routes = {(r.method, r.path): r for r in routes}
        self.limits = limits or HttpLimits()
        self.metrics = metrics
        self.on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if metrics is not None:
            metrics.initialise("usagebot_http_requests_total",
                               [{"route": r.name, "status": 200} for r in routes])
        if not 0 <= port <= 65535:
            raise ListenError(f"cannot listen on {host}:{port}: the port must be between 0 and 65535")
        try:
            self._server = self._build(self._adjustments(host, port, routes))
        except ValueError:  # waitress: the host resolves to no address ("Invalid host/port specified")
            raise ListenError(f"cannot listen on {host}:{port}: {host!r} is not an address or host name "
                              "of this machine") from None
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def _adjustments(self, host: str, port: int, routes: Sequence[Route]) -> Adjustments:
        lim = self.limits
        return Adjustments(
            host=host, port=port, threads=lim.threads, connection_limit=lim.max_connections,
            channel_timeout=max(1, int(lim.idle_timeout)), cleanup_interval=1,
            max_request_header_size=lim.max_header_bytes,
            max_request_body_size=max([r.max_body for r in routes] + [0]) + 1,
            ident="usagebot", expose_tracebacks=False, asyncore_use_poll=True, clear_untrusted_proxy_headers=True,
            log_untrusted_proxy_headers=False)

    # ------------------------------------------------------------------ waitress plumbing

    def _build(self, adj: Adjustments) -> TcpWSGIServer:
        outer = self

        class Parser(HTTPRequestParser):
            route_name = UNKNOWN_ROUTE

            def __init__(self, adj: Adjustments) -> None:
                super().__init__(adj)
                self.started = time.monotonic()  # first byte of this request (slow-loris deadline)

            def parse_header(self, header_plus: bytes) -> None:
                super().parse_header(header_plus)
                refusal, self.route_name = outer._precheck(self)
                if refusal is not None:  # answer now; the body is neither waited for nor buffered
                    self.error = _Refused(refusal)
                    self.body_rcv = None
                    self.content_length = 0
                    self.expect_continue = False
                    self.connection_close = True

        class Errors(ErrorTask):
            def execute(self) -> None:
                e = self.request.error
                resp = e.response if isinstance(e, _Refused) else Response.json(
                    e.code, {"error": f"{e.reason}: {e.body}" if e.body else e.reason})
                self.status = status_line(resp.status)
                self.response_headers.extend(resp.headers.items())
                self.set_close_on_finish()
                self.content_length = len(resp.body)
                outer._count(getattr(self.request, "route_name", UNKNOWN_ROUTE), resp.status)
                self.write(resp.body)

        class Channel(HTTPChannel):
            parser_class = Parser
            error_task_class = Errors

        class Server(TcpWSGIServer):
            channel_class = Channel

            def maintenance(self, now: float) -> None:
                super().maintenance(now)  # idle connections (channel_timeout)
                cutoff = time.monotonic() - outer.limits.read_timeout
                for ch in list(self.active_channels.values()):
                    req = ch.request  # a request still being received
                    if req is not None and not ch.requests and getattr(req, "started", cutoff) < cutoff:
                        ch.will_close = True

        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(adj.threads)
        return Server(self._app, map={}, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])

    def _route(self, method: str, path: str) -> tuple[Route | None, list[str]]:
        m = "GET" if method == "HEAD" else method
        route = self.routes.get((m, path))
        allowed = sorted(mm for (mm, p) in self.routes if p == path)
        if route is None and not allowed:  # a prefix route (the longest) takes paths no exact route has
            under = [r for (mm, p), r in self.routes.items() if r.prefix and
                     (path == p or path.startswith(p if p.endswith("/") else p + "/"))]
            route = max((r for r in under if r.method == m), key=lambda r: len(r.path), default=None)
            if route is None:  # DELETE /alerts under the web UI's GET prefix: 405 with Allow, not a 404
                allowed = sorted({r.method for r in under})
        return route, allowed

    def _precheck(self, req: HTTPRequestParser) -> tuple[Response | None, str]:
        """A refusal decided on the request line and headers alone, and the route's metrics name."""
        path = request_path(req.path)
        route, allowed = self._route(req.command, path)
        if route is None:
            if allowed:
                resp = Response.json(405, {"error": f"method {req.command} not allowed; use {', '.join(allowed)}"})
                resp.headers["Allow"] = ", ".join(allowed)
                return resp, UNKNOWN_ROUTE
            return Response.json(404, {"error": f"no such path {path[:200]}"}), UNKNOWN_ROUTE
        if req.chunked:
            return Response.json(411, {"error": "send the body with a Content-Length (chunked bodies are "
                                                "not accepted)"}), route.name
        if route.method == "POST" and "CONTENT_LENGTH" not in req.headers:
            return Response.json(411, {"error": "Content-Length is required"}), route.name
        if req.content_length > route.max_body:
            return Response.json(413, {"error": f"body of {req.content_length} bytes is larger than "
                                                f"{route.max_body}"}), route.name
        if route.authorize is not None:
            try:
                refusal = route.authorize(_header_map(req.headers))
            except Exception:
                log.exception("authorizing %s %s failed", req.command, path[:200])
                refusal = Response.json(500, {"error": "internal error (see the service log)"})
            if refusal is not None:
                return refusal, route.name
        return None, route.name

    def _count(self, route: str, status: int, seconds: float | None = None) -> None:
        if self.metrics is None:
            return
        self.metrics.inc("usagebot_http_requests_total", route=route, status=status)
        if seconds is not None:
            self.metrics.observe("usagebot_http_request_seconds", seconds, route=route)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """The WSGI application waitress calls with a complete request that passed _precheck."""
        started = time.perf_counter()
        method, path = environ["REQUEST_METHOD"], request_path(environ.get("PATH_INFO", ""))
        route, _ = self._route(method, path)
        if route is None:  # _precheck answered these already; kept for safety
            resp, name = Response.json(404, {"error": f"no such path {path[:200]}"}), UNKNOWN_ROUTE
        else:
            name = route.name
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            headers = {k[5:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
            if environ.get("CONTENT_TYPE"):
                headers["content-type"] = environ["CONTENT_TYPE"]
            headers["content-length"] = str(length)
            req = Request(method, path, parse_qs(environ.get("QUERY_STRING", "")), headers, body)
            try:
                resp = route.handler(req)
            except Exception:
                log.exception("%s %s failed", method, path, extra={"path": path})
                if self.on_error is not None:
                    self.on_error()
                resp = Response.json(500, {"error": "internal error (see the service log)"})
        out_headers = [(k, v) for k, v in resp.headers.items() if k.lower() != "content-length"]
        out_headers.append(("Content-Length", str(len(resp.body))))
        start_response(status_line(resp.status), out_headers)
        self._count(name, resp.status, time.perf_counter() - started)
        return [] if method == "HEAD" else [resp.body]

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def open_connections(self) -> int:
        return len(self._server.active_channels)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="usagebot-http", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from waitress import wasyncore

        srv = self._server
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=0.5, map=srv._map, use_poll=True, count=1)
        finally:
            srv.task_dispatcher.shutdown(timeout=5)
            wasyncore.close_all(srv._map)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            try:
                self._server.pull_trigger()  # wake the I/O loop now instead of at its next timeout
            except OSError:
                pass
            self._thread.join(timeout=10)
        elif self._thread is None:
            from waitress import wasyncore

            self._server.task_dispatcher.shutdown(timeout=5)
            wasyncore.close_all(self._server._map)
