"""docs/rules.md says what the code does: the tables that mirror the code's own tables."""

from __future__ import annotations

import re
from pathlib import Path

from rules.detectors.baseline import METHODS
from rules.docs_tables import blocks, render
from rules.kinds import KINDS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "rules.md").read_text()


def _section(title: str) -> str:
    start = DOC.index(title)
    nxt = DOC.find("\n## ", start + 1)
    sub = DOC.find("\n### ", start + 1)
    ends = [e for e in (nxt, sub) if e > 0]
    return DOC[start:min(ends) if ends else len(DOC)]


def test_default_resolve_after_per_kind_is_documented() -> None:
    rows = [line for line in _section("### How alerts end").splitlines() if line.startswith("| ") and "---" not in line]
    documented: dict[str, set[int]] = {}
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        kind = cells[0].split()[0]
        documented.setdefault(kind, set()).add(int(re.match(r"(\d+) bucket", cells[-1]).group(1)))
    assert set(documented) == set(KINDS)
    for kind, buckets in documented.items():
        assert buckets == {KINDS[kind].resolve_buckets}, kind


def test_baseline_methods_are_documented() -> None:
    row = next(line for line in DOC.splitlines() if line.startswith("| `method` |"))
    assert re.findall(r'`"(\w+)"`', row.split(" | ")[1]) == list(METHODS)


def test_generated_tables_are_up_to_date() -> None:
    """Every table docs/rules.md takes from the kinds registry is as the registry renders it now."""
    found = blocks(DOC)
    assert {"kinds", "endings"} <= set(found)
    for name, content in found.items():
        assert content == render(name), f"docs/rules.md table {name!r} is stale: run scripts/docs_tables.py"


def test_every_kind_has_its_section_and_fields_table() -> None:
    found = blocks(DOC)
    kind_row = next(line for line in DOC.splitlines() if line.startswith("| `kind` |"))
    for name in KINDS:
        assert f"\n### {name}\n" in DOC, name
        assert f"fields {name}" in found, f"docs/rules.md has no generated fields table for {name}"
        assert f"`{name}`" in kind_row, name
