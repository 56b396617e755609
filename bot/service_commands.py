"""`usagebot` subcommands of this integration (registered by bot.cli.build_parser)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the top-level parser."""
