"""kill -9 during a poll whose batch has a refused bucket (a total past a float64): the rest of the
batch, the cursor and the bucket's admin notice are one transaction, so however the poll process
dies and is run again, the result is a never-killed poll's: the good rows once, the cursor moved on,
exactly one notice per notifier about the bucket. The same for a malformed item a source with
on_error = "skip" leaves out (integrations.sources.skipped)."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from typing import Any

from sqlalchemy.engine import Engine

from bot.service.polling import poll_source
from integrations.sources.http_json import HttpJsonSource
from storage.db import make_engine
from storage.sources import get_source_state
from tests.integrations.sources.fake_http import FakeHttp
from tests.integrations.sources.helpers import (
    HOUR,
    T0,
    points,
    refusal_notices,
    skipped_notices,
    source_config,
)
from tests.integrations.sources.test_http_json import SECRET, _item, _toml

FORK = multiprocessing.get_context("fork")
NOTIFIERS = ("console", "slack")
MODES = ("inside", "stored", "timer")  # killed in the batch's transaction (not committed), right
# after it committed, or after a random delay (wherever the poll is)


def _poll(db_url: str, url: str, mode: str, reached: Any, options: str = "") -> None:
    """One poll in a forked child, with an engine of its own (exit 0 when it finished). `mode`
    "inside" / "stored": it stops at that point, tells the parent (`reached`) and waits to be killed."""
    import bot.service.polling as polling
    import storage.sources as sources

    def halt(result: Any) -> Any:
        reached.set()
        time.sleep(30)
        return result

    if mode == "inside":  # the cursor written, the notices next, in the same transaction
        save_cursor = sources._save_cursor
        sources._save_cursor = lambda *a, **k: halt(save_cursor(*a, **k))
    elif mode == "stored":
        store = polling.store_batch
        polling.store_batch = lambda *a, **k: halt(store(*a, **k))
    extra = options + 'incremental = "cursor"\n[sources.cursor]\nparam = "since"\nfield = "next_since"\ninitial = "0"\n'
    engine = make_engine(db_url)
    report = poll_source(engine, HttpJsonSource(source_config(_toml(url, extra), {"API_TOKEN": SECRET})),
                         T0 + HOUR, "#admin", notifiers=NOTIFIERS)
    os._exit(0 if report.ok else 3)


def _run(db_url: str, url: str, mode: str, rng: random.Random, options: str = "") -> bool:
    """One poll run in a child, killed as `mode` says ("none": not killed); True if it was killed."""
    reached = FORK.Event()
    child = FORK.Process(target=_poll, args=(db_url, url, mode, reached, options), daemon=True)
    child.start()
    if mode in ("inside", "stored"):
        deadline = time.monotonic() + 60
        while not reached.wait(0.01) and child.is_alive() and time.monotonic() < deadline:
            pass
        assert reached.is_set(), f"the poll never reached {mode} (exit {child.exitcode})"
    else:
        child.join(rng.uniform(0.0, 0.3) if mode == "timer" else 60)
    if child.is_alive():
        os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert child.exitcode in (0, -signal.SIGKILL), child.exitcode
    return child.exitcode == -signal.SIGKILL


def test_a_poll_killed_anywhere_stores_its_rest_and_tells_the_refused_bucket_exactly_once(
        engine: Engine, db_url: str) -> None:
    rng = random.Random(7)
    items = [_item("acme", T0, 1e308), _item("acme", T0 + 1, 1e308)]
    items += [_item(f"a{i}", T0 + i * 60, i + 1) for i in range(200)]
    modes = [*MODES, *(rng.choice(MODES) for _ in range(5)), "none"]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": items}, "next_since": "1"}))
        killed = [_run(db_url, srv.url("/usage"), mode, rng) for mode in modes]
    assert killed[:2] == [True, True] and killed[-1] is False
    state = get_source_state(engine, "billing")
    assert state is not None and state.cursor == "1"
    assert points(engine) == {(f"a{i}", "api_calls", T0 + i * 60): float(i + 1) for i in range(200)}
    notices = refusal_notices(engine, "billing")
    assert len(notices) == len(NOTIFIERS)  # one row per notifier, however many polls died on the way
    assert {n["details"]["account"] for n in notices} == {"acme"}


def test_a_poll_killed_anywhere_stores_its_rest_and_tells_each_skipped_item_exactly_once(
        engine: Engine, db_url: str) -> None:
    rng = random.Random(11)
    items = [_item("acme", T0, "lots"), {"meter": "api_calls", "qty": 1, "start": "2026-11-01T00:00:00Z"}]
    items += [_item(f"a{i}", T0 + i * 60, i + 1) for i in range(200)]
    modes = [*MODES, *(rng.choice(MODES) for _ in range(5)), "none"]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": items}, "next_since": "1"}))
        killed = [_run(db_url, srv.url("/usage"), mode, rng, 'on_error = "skip"\n') for mode in modes]
    assert killed[:2] == [True, True] and killed[-1] is False
    state = get_source_state(engine, "billing")
    assert state is not None and state.cursor == "1"
    assert points(engine) == {(f"a{i}", "api_calls", T0 + i * 60): float(i + 1) for i in range(200)}
    notices = skipped_notices(engine, "billing")
    assert len(notices) == 2 * len(NOTIFIERS)  # one row per item and notifier, however many polls died
    assert len({n["details"]["item"] for n in notices}) == 2
