"""A real local HTTP server (127.0.0.1, port 0) whose answers the test scripts.

    with FakeHttp() as srv:
        srv.route("/v1/usage", lambda req: (200, {"data": [...]}))
        url = srv.url("/v1/usage")

Handlers get a `Seen` request (method, path, query as dict of lists, headers,
body) and return (status, json_body) or (status, json_body, headers) or
(status, raw_bytes, headers). Every request is kept in `srv.requests`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.http import FakeServer


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def q(self, name: str) -> str | None:
        v = self.query.get(name)
        return v[0] if v else None


Handler = Callable[[Seen], tuple]


class FakeHttp:
    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[Seen] = []
        fake = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

            def _do(self) -> None:
                parts = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, parts.path, parse_qs(parts.query),
                            {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(n) if n else b"")
                fake.requests.append(seen)
                handler = fake.routes.get(parts.path)
                if handler is None:
                    out: tuple = (404, {"error": "no route"})
                else:
                    out = handler(seen)
                status, body = out[0], out[1]
                headers = dict(out[2]) if len(out) > 2 else {}
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                headers.setdefault("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = _do  # noqa: N815
            do_POST = _do  # noqa: N815

        self.server = FakeServer(("127.0.0.1", 0), _H)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> FakeHttp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
