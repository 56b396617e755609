"""Hot reload of the rule files and the admin's templates, on change and on SIGHUP.

The service fingerprints what it watches (the content of every rule file in
[rules] paths, and of every template under [slack] template_dir) every
[scheduler] reload_every, and on SIGHUP. When the fingerprint changes:

- the new rules are checked exactly like `usagebot check`, the templates like
  `usagebot slack check` (rendered with sample data);
- valid: the new rules are in force for the next evaluation and the new
  templates for the next message; one INFO line says what changed;
- invalid: the running rules and templates stay in force, every problem is
  logged (file:line: rule: field: message), and one notice goes to the admin
  channel through the outbox (its key is the fingerprint, so several replicas
  send it once). The same broken content is not reported again; the next
  change is checked again.

Running templates never change behind the service's back: the template
environments in use are loaded once and frozen (no Jinja auto-reload), so an
invalid template edit changes nothing until it is fixed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, TemplateError

from rules.model import RuleSet

log = logging.getLogger(__name__)


def watched_files(rule_paths: Sequence[str], template_dir: str | None) -> list[Path]:
    """The rule files ([rules] paths: files, or the *.toml files of folders) and the admin's templates."""
    out: list[Path] = []
    for raw in rule_paths:
        p = Path(raw)
        if p.is_dir():
            out += sorted(x for x in p.iterdir() if x.suffix == ".toml" and x.is_file() and not x.name.startswith("."))
        else:
            out.append(p)
    if template_dir and Path(template_dir).is_dir():
        out += sorted(x for x in Path(template_dir).rglob("*.j2") if x.is_file())
    return out


def fingerprint(files: Sequence[Path]) -> str:
    """A hash of the files' names and contents (a missing file counts as its absence)."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode() + b"\0")
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"<missing>")
        h.update(b"\0")
    return h.hexdigest()


def freeze(env: Environment) -> Environment:
    """Load every template of `env` now and stop Jinja reloading them when their files change."""
    env.auto_reload = False
    for name in env.list_templates(extensions=["j2"]):
        try:
            env.get_template(name)
        except TemplateError:
            pass  # a broken admin template is reported by `slack check` and falls back when rendered
    return env


@dataclass
class ReloadOutcome:
    changed: bool
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    ruleset: RuleSet | None = None
    fingerprint: str = ""


@dataclass
class RuleReloader:
    """Decides whether the watched files changed and whether the change can be taken."""

    rule_paths: Sequence[str]
    template_dir: str | None = None
    check_templates: Callable[[], list[str]] | None = None  # problems of the templates as they are on disk
    last: str = ""

    def __post_init__(self) -> None:
        self.last = self.current()

    def current(self) -> str:
        return fingerprint(watched_files(self.rule_paths, self.template_dir))

    def check(self, force: bool = False) -> ReloadOutcome:
        """Check the files if they changed (or `force`); remember the fingerprint either way."""
        from rules.loader import check_rules

        fp = self.current()
        if fp == self.last and not force:
            return ReloadOutcome(changed=False, fingerprint=fp)
        self.last = fp
        ruleset, rule_problems = check_rules(list(self.rule_paths))
        problems = [str(p) for p in rule_problems]
        if self.check_templates is not None:
            problems += [f"template: {p}" for p in self.check_templates()]
        return ReloadOutcome(changed=True, ok=not problems, problems=problems,
                             ruleset=ruleset if not problems else None, fingerprint=fp)


def invalid_notice(problems: Sequence[str], fp: str, now: int, channel: str | None, running: int,
                   notifiers: Sequence[str] = ("console",)) -> Any:
    """The admin-channel notice (one outbox item per notifier) for a rule / template change that was refused."""
    from dataclasses import replace

    from bot.service.alerts import admin_notice
    from bot.service.notices import notice_items

    shown = "\n".join(f"• {p}" for p in problems[:10]) + (f"\n… and {len(problems) - 10} more" if len(problems) > 10 else "")
    message = (f"A change to the rule files or templates was NOT loaded: {len(problems)} problem(s). The running "
               f"{running} rule(s) and templates stay in force until the files are fixed.\n{shown}")
    notice = replace(admin_notice("invalid", "rules", message, now, channel, "warning",
                                  details={"problems": list(problems)}, key=f"rules-invalid:{fp[:32]}"),
                     rule="reload:rules", account_name="rule files and templates", description="rule / template reload")
    return notice_items(notice, now, notifiers)
