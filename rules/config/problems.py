"""The one Problem type of every configuration file usagebot reads (rule files and the service config).

A problem names where it is as precisely as it can: the file, the line, the rule (rule files), the
field (a dotted path such as ``threshold.ratio`` or ``slack.timeout``), and its level ("error", or
"warning" for rules.lint's findings about rules that run but probably should not). Printed:

    rules/usage.toml:12: rule 'api-spike': threshold.ratio: must be > 1 for a spike rule (got 0.8)
    usagebot.toml:6: service.port: must be between 0 and 65535 (got 70000)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file, located as precisely as possible."""

    file: str
    line: int | None
    rule_id: str | None
    field: str | None
    message: str
    level: str = "error"  # "warning": rules.lint found something that runs but probably should not

    def __str__(self) -> str:
        parts = [self.file if not self.line else f"{self.file}:{self.line}"]
        if self.level != "error":
            parts.append(self.level)
        if self.rule_id is not None:
            parts.append(f"rule '{self.rule_id}'")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


class ConfigError(Exception):
    """A configuration file failed validation; `.problems` holds every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
