"""Small helpers shared by the CLI modules (bot.cli and the integration subcommands)."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO, TypeVar

from bot.settings import DB_ENV, DEFAULT_DATA_DIR, config_path, database_url
from rules.config import ConfigError

__all__ = ["DB_ENV", "DEFAULT_DATA_DIR", "add_command", "add_group", "command_prefix", "config_path",
           "database_url", "load_or_report"]

T = TypeVar("T")


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
        return f"{sys.executable} -m bot.cli"
    try:
        rel = here.relative_to(Path.cwd())
        return f"./{rel}" if rel.parts[0] != ".venv" else str(rel)
    except ValueError:
        return str(here)
