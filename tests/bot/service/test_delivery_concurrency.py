"""Two deliverers at once (threads with engines of their own, on SQLite and PostgreSQL): every outbox
row is delivered exactly once, also when one run outlives its lease or a replica's clock is skewed
(issue 12, item 1)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from sqlalchemy.engine import Engine

from bot.service.pipeline import DeliveryReport, deliver_outbox
from integrations.notice import AlertNotice
from storage.db import make_engine
from storage.outbox import OutboxItem, counts, enqueue, notify_kind

NOW = 1_790_000_000


class SlowNotifier:
    """Takes `seconds` per alert (a rate-limited Slack), recording every delivery in a shared Counter."""

    name = "console"

    def __init__(self, seen: Counter[str], lock: threading.Lock, seconds: float) -> None:
        self.seen, self.lock, self.seconds = seen, lock, seconds

    def deliver(self, notice: AlertNotice) -> None:
        time.sleep(self.seconds)
        with self.lock:
            self.seen[notice.idempotency_key] += 1


def _race(engine: Engine, runs: list[Callable[[Engine, SlowNotifier], DeliveryReport]], seconds: float,
          start_gap: float = 0.3) -> tuple[Counter[str], list[DeliveryReport]]:
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    reports: list[DeliveryReport] = []
    errors: list[BaseException] = []

    def worker(run: Callable[[Engine, SlowNotifier], DeliveryReport]) -> None:
        eng = make_engine(engine.url)  # a deliverer of its own: its own connections
        try:
            reports.append(run(eng, SlowNotifier(seen, lock, seconds)))
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            eng.dispose()

    threads = []
    for run in runs:
        t = threading.Thread(target=worker, args=(run,))
        t.start()
        threads.append(t)
        time.sleep(start_gap)
    for t in threads:
        t.join(120)
    assert not errors, errors
    return seen, reports


def _enqueue(engine: Engine, n: int) -> list[str]:
    keys = [f"notify:r:acct{i:03d}:m::fired:{NOW}" for i in range(n)]
    enqueue(engine, [OutboxItem(k, notify_kind("console"), {"key": k}) for k in keys], now=NOW)
    return keys


def test_a_replica_with_a_clock_ahead_does_not_repost_what_another_holds(engine: Engine) -> None:
    keys = _enqueue(engine, 12)
    seen, reports = _race(engine, [
        lambda e, n: deliver_outbox(e, n, NOW),
        lambda e, n: deliver_outbox(e, n, NOW + 400),  # its clock is 400 s ahead (> the 300 s lease)
    ], seconds=0.1)
    assert seen == Counter({k: 1 for k in keys})  # every row once: none lost, none doubled
    assert sum(r.sent for r in reports) == 12 and counts(engine) == {"sent": 12}


def test_a_run_that_outlives_its_lease_keeps_its_rows(engine: Engine) -> None:
    keys = _enqueue(engine, 30)
    # 30 rows x 0.15 s = 4.5 s per run, with a 1 s lease: the first run outlives its lease four times
    seen, reports = _race(engine, [
        lambda e, n: deliver_outbox(e, n, NOW, lease=1),
        lambda e, n: deliver_outbox(e, n, NOW + 3600, lease=1),
        lambda e, n: deliver_outbox(e, n, NOW, lease=1),
    ], seconds=0.15, start_gap=1.2)
    assert seen == Counter({k: 1 for k in keys})
    assert sum(r.sent for r in reports) == 30 and counts(engine) == {"sent": 30}
    assert all(r.failed == 0 for r in reports)
