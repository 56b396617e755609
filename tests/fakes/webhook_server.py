"""A local webhook receiver (real HTTP on 127.0.0.1) that behaves like a careful one would:

- verifies X-Usagebot-Signature itself (its own HMAC-SHA256 of "v1:<timestamp>:<body>", constant-time
  compare) and the timestamp's freshness: 401 when either is wrong, and the request is not accepted;
- deduplicates by Idempotency-Key: a key seen before is answered 200 and not accepted again (as
  docs/webhook.md asks receivers to do), so `accepted` holds each notice once and `requests` every try;
- answers what the test programs: `fail(status, times, retry_after)` (429, 503, 400...), or a
  dropped connection after accepting (`drop_after_accept`: the sender never learns the outcome).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.http import FakeServer


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Fault:
    status: int
    times: int
    retry_after: str | None = None


@dataclass
class FakeWebhook:
    secret: str
    tolerance: int = 300
    requests: list[Request] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    drop_after_accept: int = 0
    seen_keys: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server = FakeServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/usagebot"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeWebhook:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @classmethod
    @contextmanager
    def running(cls, secret: str, **kw: Any) -> Iterator[FakeWebhook]:
        fake = cls(secret, **kw).start()
        try:
            yield fake
        finally:
            fake.stop()

    def fail(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        self.faults.append(_Fault(status, times, retry_after))

    def signed_ok(self, headers: dict[str, str], body: bytes) -> bool:
        ts, sig = headers.get("x-usagebot-timestamp", ""), headers.get("x-usagebot-signature", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > self.tolerance:
            return False
        expected = "v1=" + hmac.new(self.secret.encode(), f"v1:{ts}:".encode() + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, sig)

    def _answer(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes, bool]:
        """(status, headers, body, drop the connection)"""
        with self.lock:
            if not self.signed_ok(headers, body):
                return 401, {}, b'{"error": "bad signature"}', False
            if self.faults:
                f = self.faults[0]
                f.times -= 1
                if f.times <= 0:
                    self.faults.pop(0)
                extra = {"Retry-After": f.retry_after} if f.retry_after is not None else {}
                return f.status, extra, b'{"error": "programmed"}', False
            key = headers.get("idempotency-key", "")
            if key and key in self.seen_keys:
                return 200, {}, b'{"duplicate": true}', False
            self.seen_keys.add(key)
            self.accepted.append(json.loads(body))
            drop = self.drop_after_accept > 0
            if drop:
                self.drop_after_accept -= 1
            return 200, {}, b'{"ok": true}', drop

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, answer, drop = fake._answer(headers, body)
                with fake.lock:
                    fake.requests.append(Request(headers, body, status))
                if drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(answer)), **extra}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(answer)

        return Handler
