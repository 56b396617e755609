"""The config file's [storage] table and the rule of its relative paths: the one part of the config
every command that opens the database reads (`usagebot ingest`, `evaluate`, `db ...`), kept apart
from bot.config.app so that reading it does not import the service's sources, notifiers and outbox
(~0.25-1 s of a command's start; tests/bot/cli/test_startup_imports.py)."""

from __future__ import annotations

from pathlib import Path

from rules.config import Document, Table
from rules.config.redaction import register_url

STORAGE = Table("storage", ("url",))
DEFAULT_STORAGE_URL = "sqlite:///usagebot-data/usagebot.db"


def relative(doc: Document, path: str) -> str:
    """Relative paths in the config are relative to the config file's folder."""
    p = Path(path)
    return str(p if p.is_absolute() else Path(doc.file).resolve().parent / p)


def storage_url(doc: Document) -> str:
    """[storage] url (default: SQLite usagebot-data/usagebot.db); relative SQLite paths are relative to the file."""
    sec = doc.section("storage")
    sec.check_keys(STORAGE)
    url = sec.str("url", DEFAULT_STORAGE_URL) or DEFAULT_STORAGE_URL
    register_url(url)  # the database password is masked in every log line and message
    from storage.db import StorageError, _normalise

    try:
        _normalise(url)
    except StorageError as exc:
        sec.problem("url", str(exc))
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        url = "sqlite:///" + relative(doc, url.removeprefix("sqlite:///"))
    return url
