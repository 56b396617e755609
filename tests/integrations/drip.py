"""A real local TCP server that answers one request by sending its bytes one at a time (each send
well within any client's per-read timeout), for tests of whole-call deadlines."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Drip:
    url: str
    sent: list[int] = field(default_factory=lambda: [0])  # bytes sent so far (after the first `upfront`)


@contextmanager
def dripping(upfront: bytes, dripped: bytes, every: float, tls: ssl.SSLContext | None = None,
             hold: bool = False) -> Iterator[Drip]:
    """Serve one connection: read its request, send `upfront` at once, then `dripped` one byte every
    `every` seconds; stops when the block ends (or the client hangs up). With `tls` (a server
    context), over TLS and at an https:// URL. With `hold`, the connection is kept open, silent,
    after the last byte until the block ends: an HTTP proxy that never answers CONNECT (nothing to
    send), or one that answers it and then never sends the ServerHello of the TLS it tunnels."""
    srv = socket.create_server(("127.0.0.1", 0))
    finished = threading.Event()
    drip = Drip(f"{'https' if tls else 'http'}://127.0.0.1:{srv.getsockname()[1]}/hook")

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        try:
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
            conn.recv(65536)
            conn.sendall(upfront)
            for b in dripped:
                conn.sendall(bytes([b]))
                drip.sent[0] += 1
                if finished.wait(every):
                    break
            if hold:
                finished.wait()
        except OSError:
            pass
        finally:
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield drip
    finally:
        finished.set()
        srv.close()
