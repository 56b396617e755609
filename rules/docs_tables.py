"""The tables of docs/rules.md that the kinds registry (rules.kinds) holds, rendered as Markdown.

docs/rules.md marks each generated table:

    <!-- generated: fields spike -->
    | Field | Type | Default | Meaning |
    ...
    <!-- end generated -->

`render(name)` is what belongs between the marks: "kinds" (every kind, what it detects),
"fields <kind>" (its [rule.threshold] settings) and "endings" (how open alerts of each kind end,
with the default resolve_after). `fill(text)` rewrites every marked table of a page;
scripts/docs_tables.py writes the page, tests/rules/test_rules_doc.py fails when it is stale.
"""

from __future__ import annotations

import re

from rules.kinds import KINDS, Kind

BEGIN = "<!-- generated: {name} -->"
END = "<!-- end generated -->"
_BLOCK = re.compile(r"<!-- generated: ([^>]*?) -->\n(.*?)<!-- end generated -->", re.S)


def _row(*cells: str) -> str:
    return ("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |").replace("|  |", "| |")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [_row(*r) for r in rows]
    return "\n".join(lines) + "\n"


def kinds_table() -> str:
    return _table(("Kind", "Fires when", "Default `resolve_after`"),
                  [(f"[{k.name}](#{k.name})", k.summary, _buckets(k)) for k in KINDS.values()])


def _buckets(kind: Kind) -> str:
    return f"{kind.resolve_buckets} bucket" + ("s" if kind.resolve_buckets != 1 else "")


def _mode_cell(kind: Kind, modes: tuple[str, ...]) -> str:
    if len(kind.modes) > 1 and set(modes) == set(kind.modes):
        return "both" if len(kind.modes) == 2 else "all"
    return ", ".join(modes)


def fields_table(kind: Kind) -> str:
    """The kind's [rule.threshold] settings (with a Mode column for kinds with modes)."""
    if not kind.modes:
        return _table(("Field", "Type", "Default", "Meaning"),
                      [(f"`{f.name}`", f.type, f.default, f.meaning) for f in kind.fields])
    choices = " | ".join(f'`"{m}"`' for m in kind.modes)
    rows = [("`mode`", "—", choices, f'`"{kind.modes[0]}"`', "")]
    rows += [(f"`{f.name}`", _mode_cell(kind, f.modes), f.type, f.default, f.meaning) for f in kind.fields]
    return _table(("Field", "Mode", "Type", "Default", "Meaning"), rows)


def endings_table() -> str:
    """How open alerts end, per kind (and mode), with the default resolve hold."""
    rows = [(e.label, e.holds, e.resolves, _buckets(k)) for k in KINDS.values() for e in k.endings]
    return _table(("Kind", "Still firing while", "Resolves when (then after `resolve_after`)", "Default `resolve_after`"),
                  rows)


def render(name: str) -> str:
    """The Markdown of the generated table `name` ("kinds", "endings", "fields <kind>")."""
    if name == "kinds":
        return kinds_table()
    if name == "endings":
        return endings_table()
    what, _, kind = name.partition(" ")
    if what == "fields" and kind in KINDS:
        return fields_table(KINDS[kind])
    raise KeyError(f"no generated table {name!r} (kinds, endings, fields <kind>)")


def blocks(text: str) -> dict[str, str]:
    """The generated tables of a page as it is: name -> content."""
    return {m.group(1): m.group(2) for m in _BLOCK.finditer(text)}


def fill(text: str) -> str:
    """The page with every generated table rendered afresh."""
    return _BLOCK.sub(lambda m: f"{BEGIN.format(name=m.group(1))}\n{render(m.group(1))}{END}", text)
