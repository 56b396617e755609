"""The `usagebot` command line: `main` (the console entry point, bot.cli.main) and one module per command group."""

from __future__ import annotations


def main(*args, **kwargs) -> int:
    """The `usagebot` console script (pyproject.toml: bot.cli:main); see bot.cli.main.main."""
    from bot.cli.main import main as run

    return run(*args, **kwargs)
