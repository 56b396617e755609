"""Console notifier: prints alerts as they would appear in Slack.

Used whenever no other notifier is configured (the demo, local runs), or beside them with
[[notifiers]] type = "console" (integrations.notifiers).
Templates are Jinja2, rendered in a sandbox so admin-supplied templates
cannot reach Python internals; a template directory given by the admin is
searched before the built-in one.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from jinja2 import TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

from integrations.notice import AlertNotice, finite
from integrations.routing import destinations
from integrations.sparkline import sparkline
from integrations.templating import template_environment
from rules.detectors import format as fmt


def format_number(x: Any) -> str:
    """A number as the alert's own message writes it (rules.detectors.format.number), so the fields,
    the "latest" of the sparkline and the backtest table never contradict the sentence: a fraction
    keeps its significant digits (0.003, not "0"; 1.0e-04, not "0"), text or a missing value is "n/a"."""
    if x is None or isinstance(x, bool):
        return "n/a"
    try:
        return fmt.number(float(x))
    except (TypeError, ValueError):
        return "n/a"


def progress_bar(fraction: float, width: int = 10) -> str:
    filled = max(0, min(width, int(round(fraction * width))))
    return "▰" * filled + "▱" * (width - filled)


def make_environment(template_dir: str | Path | None = None) -> SandboxedEnvironment:
    """The console's template environment (integrations.templating) with its `num` filter."""
    env = template_environment(template_dir)
    env.filters["num"] = format_number
    return env


class ConsoleNotifier:
    name = "console"  # its outbox rows: storage.outbox.notify_kind("console")

    def __init__(self, out: TextIO | None = None, template_dir: str | Path | None = None) -> None:
        self.out = out or sys.stdout
        self.env = make_environment(template_dir)

    def render(self, alert: AlertNotice | Mapping[str, Any]) -> str:
        """The notice as text (console/<template>.txt.j2; context `a`: its record)."""
        notice = AlertNotice.of(alert)
        try:
            tpl = self.env.get_template(f"console/{notice.template or 'alert'}.txt.j2")
        except TemplateNotFound:
            tpl = self.env.get_template("console/alert.txt.j2")
        util = finite(notice.details.get("utilization")) or 0.0
        return tpl.render(a=notice.record(), spark=sparkline(list(notice.recent)),
                          bar=progress_bar(min(util, 1.0)), util_pct=fmt.whole_percent(util),
                          destinations=[d.shown() for d in destinations(notice)])

    def deliver(self, notice: AlertNotice | Mapping[str, Any]) -> None:
        notice = AlertNotice.of(notice)
        if notice.quiet:
            return  # a quiet close: nothing was printed that would need updating
        print(self.render(notice), file=self.out)
        print(file=self.out, flush=True)  # to a pipe or journald too, at once (not when 8 KiB are buffered)
