"""The one Jinja2 environment every notifier renders with: the admin's template folder first, then the
templates shipped in integrations/templates; sandboxed (an admin's template cannot reach Python
internals), StrictUndefined (a misspelt field is an error `usagebot slack check` reports, not an empty
string), no HTML autoescape (the outputs are text and Slack JSON, each escaped by its own filters)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import ChoiceLoader, FileSystemLoader, PackageLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment


def template_environment(template_dir: str | Path | None = None, trim_blocks: bool = False) -> SandboxedEnvironment:
    """A fresh environment over `template_dir` (if any) and the packaged templates; the notifier adds
    its filters and globals. trim_blocks also strips block lines' leading whitespace (Slack's JSON)."""
    loaders: list[FileSystemLoader | PackageLoader] = []
    if template_dir:
        loaders.append(FileSystemLoader(str(template_dir)))
    loaders.append(PackageLoader("integrations", "templates"))
    return SandboxedEnvironment(loader=ChoiceLoader(loaders), undefined=StrictUndefined, autoescape=False,
                                trim_blocks=trim_blocks, lstrip_blocks=trim_blocks, keep_trailing_newline=False)
