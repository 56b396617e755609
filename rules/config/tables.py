"""Declarations of what a config table holds, so parsers, key checks and the docs test share them.

- `Table(name, keys, tables)`: the keys and sub-tables a table may hold (`free=True`: a table of
  the user's own keys, such as request headers). Parsers check keys against it; the rule loader
  declares the rule-file tables with it; tests/test_docs_keys.py checks that every declared key
  is documented.
- `setting(default, reader)`: a field of a frozen settings dataclass read with a rules.config.values
  reader; `Section.read_settings(cls)` reads the whole table (a bad value is reported and the
  default kept; an empty string, e.g. an unset "${X:-}", keeps a non-empty default), and
  `settings_table(name, cls)` is its Table.

Pydantic (installed with sqlmodel) was weighed for these: its validation errors would have to be
translated back into the messages usagebot gives (file:line, "did you mean", values as written)
error type by error type, which is more code than these few lines over the shared readers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rules.config.values import Reader


@dataclass(frozen=True)
class Table:
    """The keys a config table may hold, and its sub-tables (for check_keys and the docs test).

    free: the table's keys are the user's own (request params, headers, field maps): any key.
    """

    name: str
    keys: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    free: bool = False

    @property
    def allowed(self) -> tuple[str, ...]:
        return (*self.keys, *(t.name for t in self.tables))

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


def setting(default: Any, read: Reader, key: str | None = None) -> Any:
    """A dataclass field read from the config key `key` (default: the field's name) with `read`."""
    return field(default=default, metadata={"read": read, "key": key})


def settings_keys(cls: type) -> tuple[str, ...]:
    """The config keys of a settings dataclass (fields declared with `setting`)."""
    return tuple(f.metadata.get("key") or f.name for f in dataclasses.fields(cls) if "read" in f.metadata)


def settings_table(name: str, cls: type) -> Table:
    """The Table of a section read whole with Section.read_settings(cls)."""
    return Table(name, settings_keys(cls))
