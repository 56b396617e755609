"""Requests to the web UI without a socket (bot.service.http_server.Request), for page-level tests."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bot.service.http_server import Request, Response

HTML = {"accept": "text/html,application/xhtml+xml"}


def get(ui: Any, url: str, headers: dict[str, str] | None = None) -> Response:
    u = urlsplit(url)
    return ui.handle(Request("GET", u.path, parse_qs(u.query), {**HTML, **(headers or {})}))


def text(resp: Response) -> str:
    return resp.body.decode()


def data(ui: Any, url: str, headers: dict[str, str] | None = None) -> Any:
    sep = "&" if "?" in url else "?"
    resp = get(ui, f"{url}{sep}format=json", headers)
    assert resp.status == 200, (resp.status, resp.body[:300])
    return json.loads(resp.body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_config(path: Path, db: Path, extra: str, port: int = 0) -> Path:
    """A config.toml for the service on `db` with the shipped rules, listening on 127.0.0.1:port."""
    from bot.cli.demo import SHIPPED_RULES

    path.write_text(f"""
[storage]
url = "sqlite:///{db}"
[rules]
paths = ["{SHIPPED_RULES}"]
[service]
host = "127.0.0.1"
port = {port}
[scheduler]
leader = "lease"
leader_name = "web-{path.parent.name}"
{extra}
""")
    return path
