"""rules.gcpause: the collector is paused inside, restored after, and nesting keeps the outer pause."""

from __future__ import annotations

import gc

import pytest

from rules.gcpause import gc_paused
from rules.lifecycle import PENDING, EpisodeState, replace


def test_pause_restores_and_nests() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause does not end the outer one
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()  # restored on errors too


def test_pause_keeps_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_fast_replace_matches_dataclasses_replace() -> None:
    import dataclasses

    s = EpisodeState("r", "a", "m", "", PENDING, started_at=10, consecutive=1, last_explanation={"x": 1})
    fast = replace(s, consecutive=2, last_seen_at=20)
    assert fast == dataclasses.replace(s, consecutive=2, last_seen_at=20)
    assert s.consecutive == 1 and type(fast) is EpisodeState
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.consecutive = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field"):
        replace(s, consecutve=2)
