"""The fakes' shared server (tests.fakes.http): a client hanging up is quiet, a handler's bug is not."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from tests.fakes.http import FakeServer


class _Answers(BaseHTTPRequestHandler):
    """Writes a large answer slowly (so a client that hung up makes the write fail), or raises on /bug."""

    def log_message(self, *a: object) -> None:
        return None

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/bug":
            raise ValueError("a bug in the fake")
        self.send_response(200)
        self.send_header("Content-Length", str(64 * 1024 * 200))
        self.end_headers()
        for _ in range(200):
            self.wfile.write(b"x" * 64 * 1024)
            time.sleep(0.005)


def _get_and_hang_up(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        s.recv(1024)


def _served(path: str, capfd: pytest.CaptureFixture[str]) -> str:
    server = FakeServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        _get_and_hang_up(server.server_address[1], path)
        time.sleep(1.5)  # the handler thread's writes fail after the RST; give it time to report
    finally:
        server.shutdown()
        server.server_close()
    return capfd.readouterr().err


def test_a_client_hanging_up_leaves_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    assert _served("/big", capfd) == ""


def test_a_handler_error_is_still_printed(capfd: pytest.CaptureFixture[str]) -> None:
    assert "ValueError: a bug in the fake" in _served("/bug", capfd)
