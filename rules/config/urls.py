"""Checks of the http(s) URLs a config file gives (every URL key of every section goes through `url_problem`)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def url_problem(url: str) -> str | None:
    """What makes an http(s) URL unusable besides its scheme (callers check that with their own
    words), or None: no host, whitespace in the host, an unclosed [IPv6 address, a port that is no
    number or past 65535. The URL itself is not quoted (it may hold a password)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", "Port could not be cast..."
        reason = str(exc).split(" as ", 1)[0]
        return f"is not a usable URL ({reason}; URL not shown: it may hold a password)"
    if not parts.hostname:
        return "has no host name (e.g. https://example.com/path)"
    if any(c.isspace() for c in parts.netloc):
        return "has whitespace in its host name"
    if port == 0:
        return "has port 0 (give the service's port, or none for 443 / 80)"
    return None


_PATH = re.compile(r"/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]+/?)*")


def path_problem(path: str) -> str | None:
    """What makes an HTTP path the service serves unusable, or None: it starts with "/", has no "//",
    "." or ".." segment (a proxy or Slack normalises those away, so the route would never match), no
    whitespace, query, fragment or percent-escape."""
    segments = path.split("/")[1:]
    if not _PATH.fullmatch(path) or any(s in (".", "..") for s in segments) or "//" in path:
        return f"must be a plain path like '/ingest/events' (got {path[:60]!r})"
    return None
