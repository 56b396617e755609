"""`usagebot init DIR [--demo]`: a working config, rules and data folder to run the service on.

    DIR/config.toml             the example config (package data), with the drop-folder source on
    DIR/rules/default.toml      the shipped example rules, to edit
    DIR/usagebot-data/drops/    drop usage CSV files here (timestamp,account,metric,value)
    DIR/usagebot-data/accounts.csv   the accounts (id,name,owner_email,plan,crm_id,quota.<metric>...)

With --demo the drop folder and the accounts file hold the demo book (60 synthetic accounts, 120 days
up to today), so `usagebot serve --config DIR/config.toml` polls it, evaluates and prints alerts to the
console at once. Everything comes from the installed package: no repository checkout is needed.
"""

from __future__ import annotations

import argparse
import os
import time
from importlib.resources import files
from pathlib import Path
from typing import TextIO

from bot.cli.support import add_command, command_prefix

DATA_DIR = "usagebot-data"

# (text in the example config, what `init` writes instead): each must be found exactly once.
EDITS = (
    ('paths = ["rules/examples/default.toml"]', 'paths = ["rules"]'),
    ('enabled = false                 # set to true once the folder exists',
     'enabled = true                  # drop CSV files into usagebot-data/drops'),
    ('log_format = "json"                  # "json" (one object per line) or "text"',
     'log_format = "text"                  # "json" (one object per line, for log shippers) or "text"'),
)


def example_config() -> str:
    """The example config shipped in the package (the same text as the repository's config.example.toml)."""
    return files("bot").joinpath("examples/config.example.toml").read_text(encoding="utf-8")


def example_rules() -> str:
    return files("rules").joinpath("examples/default.toml").read_text(encoding="utf-8")


# --demo: every alert is printed at the first poll (the demo book is all "first evaluation"); the
# shipped default records conditions already true at a first evaluation and sends one summary.
DEMO_EDITS = (
    ('first_run = "digest"     # conditions already true at a first evaluation (a new book, a backfill, a new',
     'first_run = "notify"     # the demo: every alert of the first poll; "digest" (the default) records the\n'
     '                         # conditions already true at a first evaluation (a new book, a backfill, a new'),
)


def init_config_text(demo: bool = False) -> str:
    text = example_config()
    for old, new in EDITS + (DEMO_EDITS if demo else ()):
        if text.count(old) != 1:
            raise RuntimeError(f"the packaged example config no longer contains {old!r} exactly once")
        text = text.replace(old, new)
    return text


def _write(path: Path, text: str) -> None:
    """Write whole, then rename: a poller never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_demo_book(data: Path, min_age: int = 10) -> tuple[int, int]:
    from integrations.sources.csv_rows import write_accounts_csv, write_usage_csv
    from integrations.sources.demo import generate_book

    # The book runs through today (UTC): a source counts a day as complete once data of a later day
    # arrived, so yesterday, the latest closed day, is evaluated at the first poll at any time of day.
    end = (int(time.time()) // 86_400 + 1) * 86_400
    book = generate_book(end=end)
    tmp = data / "drops" / ".demo-usage.csv.tmp"
    rows = write_usage_csv(tmp, book.records())
    os.replace(tmp, data / "drops" / "demo-usage.csv")
    _settle(data / "drops" / "demo-usage.csv", min_age)
    tmp = data / ".accounts.csv.tmp"
    write_accounts_csv(tmp, book.accounts)
    os.replace(tmp, data / "accounts.csv")
    _settle(data / "accounts.csv", min_age)
    return len(book.accounts), rows


def _settle(path: Path, min_age: int = 10) -> None:
    """A file written whole and renamed into place need not wait the source's min_age (which guards
    files still being copied): dated back past it, the service's first poll reads it."""
    settled = time.time() - min_age - 1
    os.utime(path, (settled, settled))


def cmd_init(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    root = Path(args.dir)
    config = root / "config.toml"
    if config.exists() and not args.force:
        print(f"usagebot init: {config} exists; pass --force to overwrite it (and the example rules)", file=err)
        return 2
    data = root / DATA_DIR
    (data / "drops").mkdir(parents=True, exist_ok=True)
    (root / "rules").mkdir(parents=True, exist_ok=True)
    _write(config, init_config_text(args.demo))
    _write(root / "rules" / "default.toml", example_rules())
    if args.demo:
        n_accounts, n_rows = _write_demo_book(data)
        what = f"the demo book ({n_accounts} accounts, {n_rows:,} usage rows up to today) in {data}"
    else:
        if not (data / "accounts.csv").exists():
            _write(data / "accounts.csv", "id,name,owner_email,plan,crm_id\n")
            _settle(data / "accounts.csv")
        what = f"an empty drop folder {data / 'drops'} and {data / 'accounts.csv'}"
    ub = command_prefix()
    print(f"Wrote {config}, {root / 'rules' / 'default.toml'} and {what}.\n", file=out)
    print("Next:", file=out)
    print(f"  {ub} config check {config}", file=out)
    print(f"  {ub} serve --config {config}" + ("     # polls the demo book, prints alerts to the console"
                                              if args.demo else ""), file=out)
    if not args.demo:
        print(f"  cp usage.csv {data / 'drops'}/                 # timestamp,account,metric,value", file=out)
    print(f"Edit {config} for Slack ([slack] bot_token), Salesforce ([salesforce]) and more sources; every key "
          "is documented in docs/operations.md and docs/sources.md.", file=out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `usagebot init` to the top-level parser."""
    p = add_command(sub, "init", "write a working config, rules and data folder (with --demo: the demo book)",
                    ["usagebot init my-usagebot --demo && usagebot serve --config my-usagebot/config.toml",
                     "usagebot init /etc/usagebot"],
                    description=__doc__.split("\n\n")[0].split(": ", 1)[1] if __doc__ else None)
    p.add_argument("dir", metavar="DIR", help="folder to create or fill (config.toml, rules/, usagebot-data/)")
    p.add_argument("--demo", action="store_true",
                   help="fill the drop folder and accounts with the demo book so `serve` alerts at once")
    p.add_argument("--force", action="store_true", help="overwrite an existing config.toml and rules/default.toml")
    p.set_defaults(func=cmd_init)
