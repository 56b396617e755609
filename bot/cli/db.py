"""`usagebot db upgrade|current`: the schema, for DBAs (the service also migrates at start-up).

    usagebot db upgrade [--db URL] [--config FILE]   create or upgrade the schema (alembic upgrade head)
    usagebot db current [--db URL] [--config FILE]   the schema revision; exit 1 when behind this version
"""

from __future__ import annotations

import argparse
from typing import TextIO

from bot.cli.support import add_command, add_config_option, add_db_option, add_group, db_url


def cmd_upgrade(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from storage.db import make_engine, migrate, redact_url

    url = db_url(args)
    engine = make_engine(url)
    try:
        before, after = migrate(engine)
    finally:
        engine.dispose()
    if before == after:
        print(f"{redact_url(url)}: already at revision {after} (the newest); nothing to do", file=out)
    else:
        print(f"{redact_url(url)}: upgraded from {before or 'an empty database'} to revision {after}", file=out)
    return 0


def cmd_current(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from storage.db import (
        SchemaMismatch,
        current_revision,
        head_revision,
        known_revisions,
        make_engine,
        open_existing,
        redact_url,
    )

    url = db_url(args)
    try:
        engine = open_existing(url)  # a missing database or one without a schema is an error
    except SchemaMismatch:
        engine = make_engine(url)  # exists, at another revision: report which
    try:
        rev, head = current_revision(engine), head_revision()
    finally:
        engine.dispose()
    if rev == head:
        print(f"{redact_url(url)}: revision {rev} (the newest this usagebot knows)", file=out)
        return 0
    if rev in known_revisions():
        print(f"{redact_url(url)}: revision {rev}; this usagebot expects {head}: run `usagebot db upgrade`",
              file=out)
    else:
        print(f"{redact_url(url)}: revision {rev}, unknown to this usagebot (expects {head}): the database was "
              "migrated by a newer version", file=out)
    return 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add `usagebot db ...` to the top-level parser."""
    ds = add_group(sub, "db", "database schema: upgrade it, or show its revision")
    u = add_command(ds, "upgrade", "create or upgrade the schema to this version (alembic upgrade head)",
                    ["usagebot db upgrade --db postgresql://usagebot@db.internal/usagebot",
                     "USAGEBOT_DB_URL=sqlite:///data/usagebot.db usagebot db upgrade"])
    add_db_option(u)
    add_config_option(u, " whose [storage] url is used")
    u.set_defaults(func=cmd_upgrade)
    c = add_command(ds, "current", "the schema revision of the database (exit 1 when it is not this version's); "
                                   "never creates or changes a database",
                    ["usagebot db current --config config.toml", "usagebot db current --db sqlite:///data/u.db"])
    add_db_option(c)
    add_config_option(c, " whose [storage] url is used")
    c.set_defaults(func=cmd_current)
