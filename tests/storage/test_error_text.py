"""storage.error_text: the one stored form of an error (masked, bounded, its end kept)."""

from __future__ import annotations

from pathlib import Path

from rules.config import redaction
from rules.config.redaction import clip
from storage.error_text import KEPT_END, MAX_ERROR_CHARS, stored_error


def test_a_short_error_is_stored_whole() -> None:
    assert stored_error("HTTP 503: try later") == "HTTP 503: try later"


def test_a_long_error_is_cut_in_the_middle_keeping_its_end() -> None:
    error = "HTTP 400 " + "body " * 1000 + "-> parked after 5 tries; `usagebot crm retry acme` sends it again"
    kept = stored_error(error)
    assert len(kept) == MAX_ERROR_CHARS
    assert kept.startswith("HTTP 400 body") and kept.endswith("`usagebot crm retry acme` sends it again")
    assert kept[-KEPT_END:] == error[-KEPT_END:] and "…" in kept


def test_a_secret_is_masked_before_the_cut() -> None:
    token = "xoxb-1234567890-abcdefghijklmnop"
    redaction.register(token)  # a configured secret (conftest restores the known ones after the test)
    for error in (f"refused: {token} " + "y" * 3000, "x" * 3000 + f" token {token}",
                  "z" * (MAX_ERROR_CHARS - KEPT_END - 10) + token + "w" * 3000):
        kept = stored_error(error)
        assert len(kept) <= MAX_ERROR_CHARS
        for piece in (token, token[:12], token[-12:]):
            assert piece not in kept, kept[:80]


def test_clip_keeps_at_most_limit_characters_for_any_end() -> None:
    text = "a" * 50 + "b" * 50
    assert clip(text, 10) == "a" * 9 + "…"
    assert clip(text, 10, keep_end=4) == "a" * 5 + "…" + "b" * 4
    assert clip(text, 10, keep_end=40) == "…" + "b" * 9  # the end never pushes past the limit
    assert clip(text, 1, keep_end=5) == "…"
    assert clip(text, 200, keep_end=5) == text


def test_the_docs_state_the_stored_error_limits() -> None:
    """docs/operations.md states the limits: checked against the code's own numbers."""
    text = " ".join((Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text().split())
    assert f"kept to {MAX_ERROR_CHARS:,} characters (`storage/error_text.py`)" in text
    assert f"its last {KEPT_END} characters stay" in text
