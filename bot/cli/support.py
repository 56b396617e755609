"""Small helpers shared by the CLI modules (bot.cli.main and the integration subcommands)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from bot.cli.settings import DB_ENV, DEFAULT_DATA_DIR, config_path, database_url
from rules.config import ConfigError

if TYPE_CHECKING:
    from rules.model import RuleSet

__all__ = ["DB_ENV", "DEFAULT_DATA_DIR", "SHIPPED_RULES", "add_command", "add_group", "command_prefix",
           "config_path", "database_url", "db_url", "load_or_report", "load_rules_or_report", "missing_paths",
           "time_or_now"]

T = TypeVar("T")

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules" / "examples" / "default.toml"


def load_rules_or_report(paths: Sequence[str], err: TextIO) -> RuleSet | None:
    """The rule files checked; on problems print every one (file:line: rule: field: message) and return None."""
    from rules.loader import check_rules

    ruleset, problems = check_rules(paths)
    for p in problems:
        print(str(p), file=err)
    if problems:
        print(f"{len(problems)} problem(s) in the rules; nothing was run.", file=err)
        return None
    return ruleset


def missing_paths(paths: Sequence[str], flag: str, err: TextIO) -> bool:
    """Print `flag: path: no such file or directory` for every path that does not exist; True if any."""
    missing = [p for p in paths if not Path(p).exists()]
    for p in missing:
        print(f"{flag}: {p}: no such file or directory", file=err)
    return bool(missing)


def db_url(args: argparse.Namespace) -> str:
    """--db > $USAGEBOT_DB_URL > [storage] url of the config file > default; ConfigError if the file is bad."""
    from bot.config.storage import storage_url
    from rules.config import load_document

    configured = None
    if args.db is None and not os.environ.get(DB_ENV):
        path = config_path(getattr(args, "config", None))
        if path is not None:
            doc = load_document(path)
            configured = storage_url(doc)
            doc.raise_if_problems()
    return database_url(args.db, configured)


def time_or_now(text: str | None, flag: str, err: TextIO, command: str) -> int | None:
    """A time flag (ISO 8601 or epoch seconds) as epoch seconds, now when not given; None (after
    `usagebot <command>: <why>` on err) when it does not parse."""
    from bot.backtest.run import BacktestError, parse_time

    if not text:
        return int(time.time())
    try:
        return parse_time(text, flag)
    except BacktestError as exc:
        print(f"usagebot {command}: {exc}", file=err)
        return None


def load_or_report(load: Callable[[], T], err: TextIO) -> T | None:
    """Run a config loader; on problems print every one (file:line: field: message) and return None."""
    try:
        return load()
    except ConfigError as exc:
        for p in exc.problems:
            print(str(p), file=err)
        print(f"{len(exc.problems)} problem(s) in the config; nothing was done.", file=err)
        return None


def add_command(sub: argparse._SubParsersAction, name: str, summary: str, examples: Sequence[str],
                description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand with a one-line summary (in the parent's list), a description and examples (in its --help)."""
    return sub.add_parser(name, help=summary, description=description or summary,
                          epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_group(sub: argparse._SubParsersAction, name: str, summary: str) -> argparse._SubParsersAction:
    """A command group (`usagebot slack ...`) whose subcommands are listed in its --help."""
    group = sub.add_parser(name, help=summary, description=summary)
    return group.add_subparsers(dest=f"{name}_command", metavar="COMMAND", title="commands", required=True)


def add_db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", help=f"database URL (default: ${DB_ENV}, else [storage] url of the "
                                                "config file, else sqlite:///usagebot-data/usagebot.db)")


def add_config_option(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--config", metavar="FILE", help=f"config file{what} (default: $USAGEBOT_CONFIG, else "
                                                    "./config.toml when it exists)")


def command_prefix() -> str:
    """How to run usagebot in a fresh shell, for the commands we suggest ("Try next", `init`).

    `usagebot` when a fresh shell finds this same program on PATH (a system, user or pipx install);
    else its path (`.venv/bin/usagebot` from the repository): an activated virtualenv's bin folder
    is on PATH only in the shell that activated it.
    """
    script = Path(sys.argv[0]) if sys.argv and Path(sys.argv[0]).name == "usagebot" else None
    here = (script or Path(sys.executable).with_name("usagebot")).absolute()
    found = shutil.which("usagebot")
    venv_bin = Path(sys.prefix, "bin").resolve()
    if found and Path(found).resolve() == here.resolve() and Path(found).parent.resolve() != venv_bin:
        return "usagebot"
    if not here.exists():
        return f"{sys.executable} -m bot.cli.main"
    try:
        rel = here.relative_to(Path.cwd())
        return f"./{rel}" if rel.parts[0] != ".venv" else str(rel)
    except ValueError:
        return str(here)


def port_number(text: str | int) -> int:
    """A TCP port 0-65535 (0: any free one) from a flag or an environment variable. ValueError (argparse
    says it at the flag) otherwise: the socket layer would wrap 70000 silently to port 4464."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{str(text)[:40]!r} is not a port number (0-65535)")
    return port
