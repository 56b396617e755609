"""The one HTTP server class the local fakes run on.

`http.server.ThreadingHTTPServer` prints a traceback to stderr from the handler thread whenever a
client hangs up before it has read the answer (BrokenPipeError, ConnectionResetError), which the
deadline, kill and retry tests do on purpose: the traceback buried real failures in the test log.
`FakeServer` drops those (the client going away is the fake's normal life) and keeps every other
handler error loud.
"""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from typing import Any

HUNG_UP = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class FakeServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with daemon handler threads that stays quiet when a client hangs up."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], HUNG_UP):
            return
        super().handle_error(request, client_address)
