"""Where each setting comes from: flag > environment > config file > default, for every command.

SETTINGS is the one table of the settings that can come from more than one
place; docs/operations.md ("Settings: where each value comes from") shows the
same table, and a test checks the two agree. `resolve` applies the order.

Relative paths in a config file (SQLite files, rules, drop folders) are
relative to the config file; without a config file, relative to the working
directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

CONFIG_ENV = "USAGEBOT_CONFIG"
DB_ENV = "USAGEBOT_DB_URL"
DEFAULT_CONFIG = "config.toml"
DEFAULT_DATA_DIR = "usagebot-data"


@dataclass(frozen=True)
class Setting:
    name: str
    flag: str
    env: str
    config: str  # the config file key ("" = none)
    default: str  # as shown in the docs
    commands: str  # which commands take it


SETTINGS: tuple[Setting, ...] = (
    Setting("config file", "--config", CONFIG_ENV, "", f"`./{DEFAULT_CONFIG}` when it exists",
            "serve, config check, ingest, evaluate, backtest, db, slack, crm, ui"),
    Setting("database", "--db", DB_ENV, "[storage] url", f"`sqlite:///{DEFAULT_DATA_DIR}/usagebot.db`",
            "serve, ingest, evaluate, db, slack, crm"),
    Setting("HTTP listen address", "--host", "USAGEBOT_HOST", "[service] host", "`0.0.0.0`", "serve"),
    Setting("HTTP port", "--port", "USAGEBOT_PORT", "[service] port", "`8080`", "serve"),
    Setting("log level", "--log-level", "USAGEBOT_LOG_LEVEL", "[service] log_level", "`info`", "serve"),
    Setting("log format", "--log-format", "USAGEBOT_LOG_FORMAT", "[service] log_format", "`json`", "serve"),
)
BY_FLAG = {s.flag: s for s in SETTINGS}


@dataclass(frozen=True)
class Resolved(Generic[T]):
    value: T
    source: str  # "flag", "environment", "config file", "default"


def resolve(flag: str, given: T | None, configured: T | None, default: T,
            env: Mapping[str, str] | None = None, convert: type | None = None) -> Resolved[T]:
    """The value of the setting `flag` by the one precedence: flag > environment > config file > default."""
    setting = BY_FLAG[flag]
    environ = os.environ if env is None else env
    if given is not None:
        return Resolved(given, "flag")
    raw = environ.get(setting.env)
    if raw:
        try:
            return Resolved(convert(raw) if convert else raw, "environment")  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(f"${setting.env}: {raw!r} is not a valid {setting.name}") from None
    if configured is not None:
        return Resolved(configured, "config file")
    return Resolved(default, "default")


def config_path(given: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """--config, else $USAGEBOT_CONFIG, else ./config.toml when it exists, else None (no config file)."""
    environ = os.environ if env is None else env
    if given:
        return given
    if environ.get(CONFIG_ENV):
        return environ[CONFIG_ENV]
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None


def database_url(given: str | None, configured: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """--db, else $USAGEBOT_DB_URL, else the config file's [storage] url, else SQLite in ./usagebot-data."""
    from rules.config.redaction import register_url
    from storage.db import default_url

    url = resolve("--db", given, configured, default_url(DEFAULT_DATA_DIR), env).value
    register_url(url)  # its password is masked in everything printed or logged
    return url


def markdown_table() -> str:
    """SETTINGS as the Markdown table docs/operations.md shows."""
    rows = ["| setting | flag | environment | config file | default | commands |", "|---|---|---|---|---|---|"]
    for s in SETTINGS:
        rows.append(f"| {s.name} | `{s.flag}` | `{s.env}` | {f'`{s.config}`' if s.config else '-'} | {s.default} "
                    f"| {s.commands} |")
    return "\n".join(rows)
