"""Every key usagebot reads is documented (as datasette checks its settings): the keys come from the
code's own declarations (rules.loader.RULE_FILE, the kinds registry, bot.config.config_tables(),
the source types), so a new key without docs fails here.

A key is documented when the part of the docs page about its table names it: `key` in backticks
(a table row, the text) or `key = ...` (a TOML example, commented out or not). Dotted keys of
[defaults] are named whole (`routing.owner`).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

from bot.config import config_tables
from integrations.sources.base import source_types
from rules.config import Table
from rules.kinds import KINDS
from rules.loader import RULE_FILE

DOCS = Path(__file__).resolve().parents[1] / "docs"


@cache
def page(name: str) -> str:
    return (DOCS / name).read_text()


def part(name: str, heading: str) -> str:
    """The text under the Markdown heading `heading` of docs/<name>, up to the next heading of its level
    or above (lines in ``` code blocks are never headings)."""
    lines, fenced, start, level = page(name).splitlines(), False, None, 0
    for n, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"(#+) (.*?)\s*$", line)
        if match is None:
            continue
        if start is None and match.group(2) == heading:
            start, level = n + 1, len(match.group(1))
        elif start is not None and len(match.group(1)) <= level:
            return "\n".join(lines[start:n])
    assert start is not None, f"docs/{name} has no heading {heading!r}"
    return "\n".join(lines[start:])


def documented(text: str, key: str, keys: list[str]) -> bool:
    if key.endswith("_file") and key[:-5] in keys:  # docs/operations.md: secret keys also accept `<key>_file`
        return documented(text, key[:-5], keys)
    return (f"`{key}`" in text or re.search(rf"\[[\w.]*\b{re.escape(key)}\]", text) is not None
            or re.search(rf"(^|[\s{{,#`]){re.escape(key)}\s*=", text, re.M) is not None)


def undocumented(text: str, keys: list[str]) -> list[str]:
    return [k for k in keys if not documented(text, k, keys)]


def keys_of(table: Table, prefix: str = "") -> list[str]:
    """Every key of a table and its sub-tables, sub-table names included (sub-table keys bare)."""
    out = [prefix + k for k in table.keys] + [t.name for t in table.tables]
    for sub in table.tables:
        if not sub.free:
            out += keys_of(sub)
    return out


# ---------------------------------------------------------------------------------- rule files

_RULE_PARTS = {"defaults": "Defaults", "rule": "Common fields", "inhibit": "Inhibition: `[[inhibit]]`",
               "calendar": "Known quiet days: `[calendar]`"}
_RULE_TABLE_PARTS = {"baseline": "spike", "guards": "Guards", "segment": "Segment", "routing": "Routing",
                     "cohort": "Cohort events: `[rule.cohort]`"}


def test_every_rule_file_key_is_documented() -> None:
    missing = []
    for table in RULE_FILE:
        text = part("rules.md", _RULE_PARTS[table.name])
        if table.name == "defaults":  # named whole: `routing.owner`
            keys = list(table.keys) + [f"{t.name}.{k}" for t in table.tables for k in t.keys]
        elif table.name == "rule":
            keys = list(table.keys) + [f"[rule.{t.name}]" for t in table.tables]
        else:
            keys = keys_of(table)
        missing += [f"{table.name}: {k}" for k in undocumented(text, keys)]
        if table.name == "rule":
            for sub in table.tables:
                if sub.name in _RULE_TABLE_PARTS:
                    sub_text = part("rules.md", _RULE_TABLE_PARTS[sub.name])
                    missing += [f"rule.{sub.name}: {k}" for k in undocumented(sub_text, list(sub.keys))]
    assert missing == [], f"docs/rules.md does not document: {missing}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_threshold_field_of_every_kind_is_documented(kind: str) -> None:
    keys = list(KINDS[kind].keys)
    assert undocumented(part("rules.md", kind), keys) == []


# ------------------------------------------------------------------------------ service config

_CONFIG_PARTS = {
    "storage": ("operations.md", "### `[storage]`"), "rules": ("operations.md", "### `[rules]`"),
    "service": ("operations.md", "### `[service]`"), "scheduler": ("operations.md", "### `[scheduler]`"),
    "evaluation": ("operations.md", "### `[evaluation]`"), "ingest": ("sources.md", "## Push ingest (CloudEvents)"),
    "sources": ("sources.md", "## Keys every source has"), "slack": ("slack.md", "## Configuration"),
    "salesforce": ("salesforce.md", None), "health": ("salesforce.md", "### Configuring it: `[health]`"),
}


def _text(name: str, heading: str | None) -> str:
    return page(name) if heading is None else part(name, heading.lstrip("# "))


def test_the_docs_test_knows_every_config_table() -> None:
    assert {t.name for t in config_tables()} == set(_CONFIG_PARTS)
    assert "secret keys also accept `<key>_file`" in page("operations.md")


@pytest.mark.parametrize("table", config_tables(), ids=lambda t: t.name)
def test_every_config_key_is_documented(table: Table) -> None:
    name, heading = _CONFIG_PARTS[table.name]
    assert undocumented(_text(name, heading), keys_of(table)) == [], f"docs/{name}"


@pytest.mark.parametrize("source_type", sorted(source_types()))
def test_every_source_key_is_documented(source_type: str) -> None:
    stype = source_types()[source_type]
    text = part("sources.md", next(h for h in re.findall(r"^## (.*)$", page("sources.md"), re.M)
                                   if h.startswith(f"`{source_type}`")))
    keys = list(stype.keys) + [k for t in stype.tables for k in t.keys]
    assert undocumented(text, keys) == [], f"docs/sources.md, {source_type}"
