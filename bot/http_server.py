"""The service's HTTP server (stdlib ThreadingHTTPServer): /healthz, /readyz, /metrics, push ingest, Slack.

Routes are plain functions Request -> Response, so the Slack app's HTTP
handler and the push endpoint are mounted the same way. Bodies larger than
`max_body` are refused with 413 before they are read; requests without a
Content-Length (chunked) get 411.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HttpServer:
    def __init__(self, host: str, port: int, routes: Mapping[tuple[str, str], Handler],
                 max_body: int = 2_000_000, on_error: Callable[[], None] | None = None) -> None:
        self.routes = dict(routes)
        self.max_body = max_body
        self.on_error = on_error
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "usagebot"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                log.debug("%s %s", self.address_string(), format % args)

            def _send(self, resp: Response) -> None:
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.body)

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                method = "GET" if self.command == "HEAD" else self.command
                handler = server.routes.get((method, parts.path))
                if handler is None:
                    allowed = sorted(m for (m, p) in server.routes if p == parts.path)
                    if allowed:
                        self._send(Response.json(405, {"error": f"method {self.command} not allowed; "
                                                                f"use {', '.join(allowed)}"}))
                    else:
                        self._send(Response.json(404, {"error": f"no such path {parts.path}"}))
                    return
                body = b""
                if self.command in ("POST", "PUT", "PATCH"):
                    length = self.headers.get("Content-Length")
                    if length is None:
                        self.close_connection = True
                        self._send(Response.json(411, {"error": "Content-Length is required"}))
                        return
                    try:
                        n = int(length)
                    except ValueError:
                        self.close_connection = True
                        self._send(Response.json(400, {"error": "bad Content-Length"}))
                        return
                    if n > server.max_body:
                        self.close_connection = True
                        self._send(Response.json(413, {"error": f"body of {n} bytes is larger than "
                                                                f"{server.max_body}"}))
                        return
                    body = self.rfile.read(n)
                req = Request(self.command, parts.path, parse_qs(parts.query),
                              {k.lower(): v for k, v in self.headers.items()}, body)
                try:
                    resp = handler(req)
                except Exception:
                    log.exception("%s %s failed", self.command, parts.path, extra={"path": parts.path})
                    if server.on_error is not None:
                        server.on_error()
                    resp = Response.json(500, {"error": "internal error (see the service log)"})
                self._send(resp)

            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                self._handle()

            def do_HEAD(self) -> None:  # noqa: N802
                self._handle()

            def do_POST(self) -> None:  # noqa: N802
                self._handle()

        self._httpd = _Server((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="usagebot-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
