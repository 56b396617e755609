"""The notifier registry: each notifier type once, and the notifiers a config asks for.

    [[notifiers]]            # as many as you like, side by side
    type = "webhook"         # a type of NOTIFIER_TYPES: webhook, console
    name = "ops"             # its outbox rows are notify:<name> (default: the type); unique
    ...                      # the type's own keys (integrations/webhook.py)

Slack is set up by its own [slack] section (it is on when bot_token is set); the console is the
notifier when no other is configured, and beside the others with `type = "console"`. Every
configured notifier gets every notification as an outbox row of its own (bot.service.notices.Notices), so
one failing never holds back another. A new notifier is one module and one `NotifierType` entry.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy.engine import Engine

from integrations import webhook
from integrations.notifier import Notifier
from rules.config import Section, Table

COMMON_KEYS = ("type", "name", "enabled")  # every [[notifiers]] entry; each type adds its own
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


@dataclass(frozen=True)
class NotifierSpec:
    """One configured notifier: its type, its name (outbox kind notify:<name>), its parsed settings."""

    type: str
    name: str
    settings: Any = None


@dataclass(frozen=True)
class BuildContext:
    engine: Engine
    clock: Callable[[], int]
    slack: Any = None  # integrations.slack.config.SlackConfig, when [slack] is present
    out: TextIO | None = None  # where a console notifier prints (default stdout)


@dataclass(frozen=True)
class NotifierType:
    """A kind of notifier: how its `[[notifiers]]` entry is read, and how it is built."""

    name: str
    parse: Callable[[Section, str], Any] | None  # None: not configured by [[notifiers]]
    build: Callable[[NotifierSpec, BuildContext], Notifier]
    keys: tuple[str, ...] = COMMON_KEYS  # the keys its entry may hold (checked; documented, tests/test_docs_keys.py)


def _parse_console(sec: Section, name: str) -> dict[str, Any]:
    sec.check_keys(COMMON_KEYS)
    return {}  # no settings of its own: templates come from [slack] template_dir (console/*.txt.j2)


def _build_console(spec: NotifierSpec, ctx: BuildContext) -> Notifier:
    from integrations.console import ConsoleNotifier

    notifier = ConsoleNotifier(out=ctx.out, template_dir=getattr(ctx.slack, "template_dir", None))
    notifier.name = spec.name
    return notifier


def _build_slack(spec: NotifierSpec, ctx: BuildContext) -> Notifier:
    from integrations.slack.notifier import SlackNotifier

    return SlackNotifier(ctx.slack, ctx.engine, clock=ctx.clock)


NOTIFIER_TYPES: dict[str, NotifierType] = {t.name: t for t in (
    NotifierType("slack", None, _build_slack),
    NotifierType("console", _parse_console, _build_console),
    NotifierType("webhook", webhook.parse_webhook_config, lambda spec, ctx: webhook.WebhookNotifier(spec.settings),
                 webhook.KEYS),
)}
NOTIFIERS = Table("notifiers", COMMON_KEYS)  # the keys every [[notifiers]] entry has


def parse_notifiers(sections: Sequence[Section]) -> tuple[NotifierSpec, ...]:
    """The `[[notifiers]]` entries (problems recorded on their sections; disabled entries skipped)."""
    out: list[NotifierSpec] = []
    seen: dict[str, Section] = {}
    configurable = sorted(n for n, t in NOTIFIER_TYPES.items() if t.parse is not None)
    for sec in sections:
        kind = sec.str("type", required=True, choices=configurable + ["slack"])
        if kind == "slack":
            sec.problem("type", "Slack is set up in the [slack] section (bot_token), not in [[notifiers]]")
            continue
        if kind is None:
            continue
        name = sec.str("name", kind) or kind
        if not _NAME.match(name):
            sec.problem("name", f"must be lower-case letters, digits, - and _ (at most 40), starting with a letter; "
                                f"got {name!r}")
            continue
        if name == "slack" or name in seen:
            also = f" (also at line {seen[name].line('name') or seen[name].line()})" if name in seen else ""
            sec.problem("name", f"notifier name {name!r} is taken{also}: give each [[notifiers]] entry its own name")
            continue
        seen[name] = sec
        settings = NOTIFIER_TYPES[kind].parse(sec, name)  # type: ignore[misc]
        if sec.bool("enabled", True) is False or settings is None:
            continue
        out.append(NotifierSpec(kind, name, settings))
    return tuple(out)


def configured(specs: Sequence[NotifierSpec], slack: Any = None) -> list[NotifierSpec]:
    """Every notifier of a config: Slack when [slack] has a bot token, the [[notifiers]] entries, and
    the console when there is no other."""
    out = [NotifierSpec("slack", "slack")] if slack is not None and getattr(slack, "enabled", False) else []
    out += list(specs)
    return out or [NotifierSpec("console", "console")]


def build_notifiers(specs: Sequence[NotifierSpec], engine: Engine, slack: Any = None,
                    clock: Callable[[], int] = lambda: int(time.time()), out: TextIO | None = None) -> list[Notifier]:
    """The notifiers of `configured(specs, slack)`, built."""
    ctx = BuildContext(engine, clock, slack, out)
    return [NOTIFIER_TYPES[s.type].build(s, ctx) for s in configured(specs, slack)]
