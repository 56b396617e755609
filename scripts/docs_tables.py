"""Rewrite the generated tables of docs/rules.md from the kinds registry (rules.docs_tables).

    .venv/bin/python scripts/docs_tables.py          # rewrite docs/rules.md
    .venv/bin/python scripts/docs_tables.py --check  # exit 1 when the page is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rules.docs_tables import fill  # noqa: E402

PAGE = ROOT / "docs" / "rules.md"


def main(argv: list[str]) -> int:
    text = PAGE.read_text()
    new = fill(text)
    if "--check" in argv:
        print("docs/rules.md is up to date" if new == text else "docs/rules.md is stale: run scripts/docs_tables.py")
        return 0 if new == text else 1
    PAGE.write_text(new)
    print("docs/rules.md: generated tables written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
