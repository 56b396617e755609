"""Two evaluators and two deliverers at once on one database (threads with engines of their own, on
SQLite and PostgreSQL): the episodes are those of one evaluator alone, no key ever has two open
episodes, and every notification is delivered exactly once (issue 12, items 1 and 4)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.service.pipeline import deliver_outbox, run_cycle
from integrations.notice import AlertNotice
from integrations.sources.demo import generate_book
from rules.loader import load_rules
from rules.model import DAY
from storage.accounts import upsert_accounts
from storage.db import make_engine, migrate
from storage.episodes import EpisodeConflict, episodes_table, record_step
from storage.outbox import counts
from storage.usage import upsert_usage

SHIPPED = Path(__file__).resolve().parents[3] / "rules" / "examples" / "default.toml"
END = 1_792_800_000 - 1_792_800_000 % DAY
DAYS = 20


@pytest.fixture(scope="module")
def book():
    return generate_book(n_accounts=30, days=70, end=END, seed=5)


def _load(engine: Engine, book) -> None:
    upsert_accounts(engine, book.accounts)
    upsert_usage(engine, book.records())


def _episodes(engine: Engine) -> list[tuple]:
    e = episodes_table.c
    with engine.connect() as c:
        rows = c.execute(sa.select(e.rule_id, e.account_id, e.metric, e.discriminator, e.status, e.started_at,
                                   e.fired_at, e.resolved_at)).all()
    return sorted(tuple(r) for r in rows)


def _fired_events(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.text("SELECT count(*) FROM alert_events WHERE event = 'fired'")).scalar_one())


class Recorder:
    name = "console"

    def __init__(self, seen: Counter[str], lock: threading.Lock) -> None:
        self.seen, self.lock = seen, lock

    def deliver(self, notice: AlertNotice) -> None:
        time.sleep(0.01)
        alert = notice.record()
        key = f"{alert['rule']}|{alert['account']}|{alert['discriminator']}|{alert['event']}|{alert['at']}"
        with self.lock:
            self.seen[key] += 1


def test_two_evaluators_and_two_deliverers(engine: Engine, book, tmp_path: Path) -> None:
    ruleset = load_rules([SHIPPED])
    times = list(range(END - DAYS * DAY, END + 1, DAY))
    reference = make_engine(f"sqlite:///{tmp_path / 'reference.db'}")  # one evaluator, alone
    migrate(reference)
    _load(reference, book)
    for t in times:
        run_cycle(reference, ruleset, t)
    _load(engine, book)

    barrier = threading.Barrier(2)
    evaluating = threading.Event()
    evaluating.set()
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def evaluator() -> None:
        eng = make_engine(engine.url)
        try:
            for t in times:
                barrier.wait(30)  # both evaluate the same time at the same moment: the racy case
                run_cycle(eng, ruleset, t)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            eng.dispose()

    def deliverer(skew: int) -> None:
        eng = make_engine(engine.url)
        try:
            while evaluating.is_set():
                deliver_outbox(eng, Recorder(seen, lock), END + skew)
                time.sleep(0.02)
        except BaseException as exc:
            errors.append(exc)
        finally:
            eng.dispose()

    evaluators = [threading.Thread(target=evaluator) for _ in range(2)]
    deliverers = [threading.Thread(target=deliverer, args=(skew,)) for skew in (0, 400)]  # one clock 400 s ahead
    for t in evaluators + deliverers:
        t.start()
    for t in evaluators:
        t.join(300)
    evaluating.clear()
    for t in deliverers:
        t.join(60)
    assert not errors, errors
    deliver_outbox(engine, Recorder(seen, lock), END)  # whatever was enqueued last

    assert _episodes(engine) == _episodes(reference)
    assert _fired_events(engine) == _fired_events(reference) > 0
    e = episodes_table.c
    with engine.connect() as c:
        twins = c.execute(sa.select(e.rule_id, e.account_id, e.metric, e.discriminator, sa.func.count())
                          .where(e.status.in_(["pending", "firing"]))
                          .group_by(e.rule_id, e.account_id, e.metric, e.discriminator)
                          .having(sa.func.count() > 1)).all()
    assert twins == []
    assert set(seen.values()) == {1}  # nothing doubled
    assert counts(engine) == {"sent": len(seen)}  # nothing lost
    reference.dispose()


def test_the_database_refuses_a_second_open_episode(engine: Engine, book) -> None:
    """A step computed from states read before another evaluation started the same key's episode (as
    an older replica without the evaluation lock would) fails whole, naming the conflict."""
    from dataclasses import replace

    from rules.lifecycle import LifecycleResult, Transition
    from storage.episodes import load_states

    ruleset = load_rules([SHIPPED])
    _load(engine, book)
    for day in range(END - 12 * DAY, END + 1, DAY):
        run_cycle(engine, ruleset, day)
    open_ = [s for s in load_states(engine).values() if s.is_open]
    assert open_, "the book should have open episodes"
    twin = replace(open_[0], episode_id=None, started_at=open_[0].started_at + DAY, consecutive=1)
    step = LifecycleResult({twin.key: twin}, [Transition("pending", twin.started_at, twin, None, notify=False)])
    before = _episodes(engine)
    with pytest.raises(EpisodeConflict, match="open episode of the same key"):
        record_step(engine, step, [], {r.id: r.rule_hash for r in ruleset.rules})
    assert _episodes(engine) == before  # nothing of the losing step was written
    with engine.begin() as c, pytest.raises(sa.exc.IntegrityError):  # nor by hand
        row = dict(c.execute(sa.select(episodes_table).where(episodes_table.c.id == open_[0].episode_id))
                   .one()._mapping)
        c.execute(sa.insert(episodes_table).values({**row, "id": None, "started_at": row["started_at"] + 1}))
