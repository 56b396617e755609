"""A demo book evaluated like the service would (usagebot demo), shared by the web UI tests.

Tests that write (acknowledge, add episodes) copy it first (`book_copy`)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from bot.cli.demo import SHIPPED_RULES, run_demo
from bot.config.web import WebConfig
from bot.web.app import WebUI
from integrations.sources.demo import DEFAULT_END
from rules.loader import load_rules
from rules.model import RuleSet
from storage.db import make_engine

NOW = DEFAULT_END + 3600
TOKEN = "machine-token-0123456789abcdef"


@dataclass
class Book:
    path: Path
    rules: RuleSet


@pytest.fixture(scope="session")
def demo_book(tmp_path_factory: pytest.TempPathFactory) -> Book:
    d = tmp_path_factory.mktemp("web-demo")
    rules = load_rules([str(SHIPPED_RULES)])
    run_demo(rules, io.StringIO(), data_dir=d, end=DEFAULT_END)
    return Book(d / "demo.db", rules)


@pytest.fixture
def book_engine(demo_book: Book, tmp_path: Path) -> Iterator[Engine]:
    """A private copy of the demo book (tests may write to it)."""
    path = tmp_path / "book.db"
    shutil.copy(demo_book.path, path)
    eng = make_engine(f"sqlite:///{path}")
    try:
        yield eng
    finally:
        eng.dispose()


def make_ui(engine: Engine, rules: RuleSet, config: WebConfig | None = None, **kw: object) -> WebUI:
    cfg = config or WebConfig(tokens=(), anonymous=True)
    return WebUI(cfg, engine, lambda: rules, clock=lambda: NOW, **kw)  # type: ignore[arg-type]
