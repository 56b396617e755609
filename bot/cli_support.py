"""Small helpers shared by the CLI modules (bot.cli and the integration subcommands)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TextIO, TypeVar

from bot.configbase import ConfigError

DEFAULT_DATA_DIR = "usagebot-data"
DB_ENV = "USAGEBOT_DB_URL"

T = TypeVar("T")


def database_url(explicit: str | None, configured: str | None = None) -> str:
    """--db, else $USAGEBOT_DB_URL, else the config file's [storage].url, else SQLite in ./usagebot-data."""
    from bot.redaction import register_url
    from storage.db import default_url

    url = explicit or os.environ.get(DB_ENV) or configured or default_url(DEFAULT_DATA_DIR)
    register_url(url)  # its password is masked in everything printed or logged
    return url


def load_or_report(load: Callable[[], T], err: TextIO) -> T | None:
    """Run a config loader; on problems print every one (file:line: field: message) and return None."""
    try:
        return load()
    except ConfigError as exc:
        for p in exc.problems:
            print(str(p), file=err)
        print(f"{len(exc.problems)} problem(s) in the config; nothing was done.", file=err)
        return None
