"""Structured logs: one JSON object per line (or plain text), with the `extra` fields of each call.

    log.info("polled %s", sid, extra={"source": sid, "rows": 120})
    -> {"ts": "2026-11-03T10:00:00.123Z", "level": "info", "logger": "bot.serve.service",
        "message": "polled billing-api", "source": "billing-api", "rows": 120}

Secrets never reach the logs: configuration secrets are `Secret` objects
(shown as ***), and the root handler (and logging's last-resort handler, used
before setup) masks every known secret in every record, in any encoding
(rules.config.redaction.RedactingFilter).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from rules.config.redaction import install_on

_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime", "taskName"}


def _jsonable(v: Any) -> Any:
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    if isinstance(v, list | tuple | set | frozenset):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = _jsonable(v)
        if record.exc_info or record.exc_text:
            out["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> logging.Handler:
    """Route the root logger to `stream` (stderr) in the given format; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_usagebot", False):
            root.removeHandler(h)
    handler._usagebot = True  # type: ignore[attr-defined]
    install_on(handler)
    if logging.lastResort is not None:
        install_on(logging.lastResort)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler
