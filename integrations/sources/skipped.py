"""Malformed items a polled source leaves out with `on_error = "skip"`, and how they are told once.

By default (`on_error = "reject"`) one malformed item (a JSON item without a required field, a
non-numeric value, an unparseable timestamp, a SQL row with a bad account) fails the whole poll and
nothing of it is stored. For a window source that is forever: the watermark never moves past the
item while it stays in the source's data, so no later row is stored either. With `"skip"` the poll
stores the other items (its batch carries the skipped ones, `Batch.skipped`) and the poll runner
(bot.service.polling) queues one admin notice per skipped item in the same transaction as the store.

A skipped item is keyed by its **content without its value** (a hash of its canonical JSON less the
value field, `identity`; a SQL row's account, metric and bucket), not by its page and index: those shift as the window moves, and a window source
reads the item again on every poll while it is within the window. The key of a told item is in the
outbox (storage.outbox.known_keys), so it is not told again, after a restart too; a corrected item has
other content and is stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rules.config import Section

ON_ERROR = ("reject", "skip")
MAX_SHOWN = 20  # skipped items listed in one poll's message (all of them get a notice)


def parse_on_error(section: Section) -> str:
    """The `on_error` key of a [[sources]] table: "reject" (default: a malformed item fails the
    poll, nothing stored) or "skip" (the item is left out and told once, the rest stored)."""
    return section.str("on_error", "reject", choices=ON_ERROR) or "reject"


def digest(*parts: Any) -> str:
    """A stable hash of `parts` as canonical JSON (sorted keys, no spaces; a value JSON cannot write
    is written as its repr), 24 hex digits: the same item has the same digest on every poll."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def identity(item: Any, value_path: str) -> Any:
    """`item` without its value (at the dotted `value_path`): what an item's notice is keyed by. A
    source re-serves the bucket that is still open with its running total (OpenMeter, Stripe, most
    usage APIs), so a malformed item's value grows from poll to poll while it is the same item: keyed
    with its value, it would be told again at every poll."""
    if not value_path:
        return item
    head, _, rest = value_path.partition(".")
    if isinstance(item, Mapping) and head in item:
        out: Any = dict(item)
    elif isinstance(item, list) and head.lstrip("-").isdigit() and -len(item) <= int(head) < len(item):
        out, head = list(item), int(head) % len(item)  # a list index, as http_fetch.dig reads one
    else:
        return item
    if rest:
        out[head] = identity(item[head], rest)
    elif isinstance(out, list):
        out[head] = None  # (kept in its place: the other elements keep their indexes)
    else:
        del out[head]
    return out


@dataclass(frozen=True, slots=True)
class SkippedItem:
    """One malformed item left out of a poll: where it was read, what is wrong, its content digest."""

    where: str  # e.g. "page 2, item 3 (data[3])" (where it was this time; it may move)
    problems: str  # what is wrong with it, as the "reject" error would list it
    digest: str  # digest() of the item's content

    def key(self, source_id: str) -> str:
        """The idempotency key of its admin notice: per source and item content."""
        return f"source-skipped:{source_id}:{self.digest}"


def message(source_id: str, part: str, items: Sequence[SkippedItem]) -> str:
    """The poll's words about the items it newly skipped (for the log, the report, last_error)."""
    shown = "\n  ".join(f"{s.where}: {s.problems}" for s in items[:MAX_SHOWN])
    more = f"\n  ... and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else ""
    return (f"source {source_id!r}: {part}: {len(items)} malformed item(s) skipped (on_error = \"skip\"), not "
            f"stored; the rest was stored:\n  {shown}{more}")


@dataclass
class Malformed:
    """The malformed items of one poll, as its error lists them ("reject") and as it leaves them
    out ("skip"): the source raises base.malformed_error(problems) or yields `items` with its batch."""

    problems: list[str]
    items: list[SkippedItem]

    def __init__(self, value_path: str = "") -> None:
        self.problems, self.items = [], []
        self.value_path = value_path  # the item's value field, left out of its key (identity)

    def add(self, where: str, problem: str, *content: Any) -> None:
        """Item `content` read at `where` is malformed because of `problem`. With a `value_path` the last
        part of `content` is the item itself, keyed without its value (not by the problem either: its
        words quote the value, "expected a number, got '1,250'", which grows with the open bucket)."""
        self.problems.append(f"{where}: {problem}")
        if self.value_path and content:
            content = (*content[:-1], identity(content[-1], self.value_path))
        self.items.append(SkippedItem(where, problem, digest(*content)))
