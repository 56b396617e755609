"""csv source, columnar: a polled file is parsed by the columnar reader and stored as columns; what
it stores, reports and remembers is exactly what the row parser's records stored (the path before
the columnar one), on SQLite and PostgreSQL, for random files: duplicate keys, several metrics,
bad rows (on_error skip and reject), files the columnar reader hands over to the row parser half-way.
A kill -9 during the poll's store leaves all of the file or none of it."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import integrations.sources.csv_rows as csv_rows
import integrations.sources.csv_source as csv_source
import storage.usage_load as usage_load
from bot.service.polling import PollReport, poll_source
from integrations.sources.base import PollContext
from integrations.sources.csv_rows import read_usage_csv
from integrations.sources.csv_source import CsvSource
from storage.db import make_engine
from storage.sources import get_source_state
from storage.usage_values import UsageColumns
from tests.dbs import migrated_engine
from tests.integrations.sources.helpers import DAY, T0, points
from tests.integrations.sources.test_csv_source import _source as csv_source_of
from tests.storage.test_usage_layout_kill9 import _killed_until_done

HEADER = "timestamp,account,metric,value\n"


def _source(path: Path, on_error: str = "skip") -> CsvSource:
    return csv_source_of(path, f'on_error = "{on_error}"')


@pytest.fixture
def twin(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A second empty database of the same kind as `engine`'s (the reference run)."""
    if db_url.startswith("sqlite"):
        url, server = f"sqlite:///{tmp_path / 'twin.db'}", None
    else:
        server = request.getfixturevalue("pg_server")
        url = server.fresh_schema()
    try:
        with migrated_engine(url) as eng:
            yield eng
    finally:
        if server is not None:
            server.drop_schema(url)


def _row_parser(path: Path, on_error: str) -> tuple[list[UsageColumns], list, list]:
    """The read before the columnar path: every row a UsageRecord (csv_rows.read_usage_csv)."""
    result = read_usage_csv(path, on_error=on_error, opener=csv_rows.open_drop)  # type: ignore[arg-type]
    return [], result.records, result.errors


def _random_rows(rng: random.Random, n: int, bad: bool) -> str:
    accounts = [f"acct-{i}" for i in range(rng.randint(1, 40))]
    metrics = rng.sample(["api_calls", "seats", "gb.stored", "jobs:run"], rng.randint(1, 4))
    lines = []
    for _ in range(n):
        ts = T0 + rng.randrange(0, 3 * DAY, rng.choice((60, 3600, 17)))  # 17: several rows per minute
        when = _iso(ts) if rng.random() < 0.8 else rng.choice((_iso(ts)[:10], _iso(ts).replace("Z", "+00:00")))
        value = rng.choice((f"{rng.randint(0, 1000)}", f"{rng.random() * 100:.6f}", "0", f"{rng.random():.3e}"))
        lines.append(f"{when},{rng.choice(accounts)},{rng.choice(metrics)},{value}")
        if bad and rng.random() < 0.02:
            lines.append(rng.choice((f"{_iso(ts)},acme,api_calls,-1", "nope,acme,api_calls,1",
                                     f"{_iso(ts)},,api_calls,1", f"{_iso(ts)},acme,bad metric,1",
                                     f"{_iso(ts)},acme,api_calls")))
        if rng.random() < 0.1:
            lines.append(lines[rng.randrange(len(lines))])  # the same row again: added up
    return HEADER + "\n".join(lines) + "\n"


def _iso(ts: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _outcome(engine: Engine, report: PollReport) -> tuple:
    state = get_source_state(engine, "drops")
    assert state is not None
    with engine.connect() as c:
        series = sorted(tuple(r) for r in c.execute(sa.text("SELECT source_id, metric, account_id FROM source_series")))
        first = sorted(tuple(r) for r in c.execute(sa.text("SELECT * FROM usage_first_seen")))
    return (points(engine), report.ok, report.error, report.batches, report.rows, report.points_written,
            sorted(report.changed), report.rejected, state.cursor, state.watermark, state.metrics,
            state.last_error, series, first)


@pytest.mark.parametrize("compare", ["numpy", "staged"])  # staged: compared with the stored rows in SQL
@pytest.mark.parametrize("seed", range(6))
def test_a_polled_file_stores_exactly_what_the_row_parser_stored(
        engine: Engine, twin: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int,
        compare: str) -> None:
    if compare == "staged":  # every file staged in bulk (SQLite: a staging file; PostgreSQL: COPY)
        monkeypatch.setattr(usage_load, "ADBC_MIN_ROWS", 1)
    rng = random.Random(seed)
    on_error = "reject" if seed % 3 == 2 else "skip"
    # small Arrow blocks: several columnar chunks per file, and a bad row in a later block makes the
    # reader hand over to the row parser with chunks already read (columns, then records, in one batch)
    monkeypatch.setattr(csv_rows, "ARROW_BLOCK_BYTES", rng.choice((2_000, 9_000, 1 << 20)))
    drops = tmp_path / f"drops-{seed}"
    drops.mkdir()
    for k in range(3):
        (drops / f"{k}.csv").write_text(_random_rows(rng, rng.randint(1, 1500), bad=rng.random() < 0.5))
    files = sorted(drops.iterdir())
    src = _source(drops, on_error)
    for step in range(3):  # first poll, then changed files: replaced values, unchanged rows not rewritten
        now = T0 + 4 * DAY + step * 600
        got = _outcome(engine, poll_source(engine, src, now, admin_channel="#ops"))
        with monkeypatch.context() as m:
            m.setattr(csv_source, "_read_usage", _row_parser)
            want = _outcome(twin, poll_source(twin, src, now, admin_channel="#ops"))
        assert got == want
        assert got[0] or got[7]  # something stored or something rejected: the test compares a poll
        f = rng.choice(files)
        text = f.read_text().splitlines(keepends=True)
        keep = text[:1] + [ln for ln in text[1:] if rng.random() < 0.8]
        f.write_text("".join(keep) + _random_rows(rng, rng.randint(1, 300), bad=False)[len(HEADER):])
        os.utime(f, (1_000_000_000 + step, 1_000_000_000 + step))


def test_a_clean_file_is_polled_without_a_usage_record_per_row(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "u.csv"
    f.write_text(HEADER + "".join(f"{_iso(T0 + i * 60)},acct-{i % 7},{('api_calls', 'seats')[i % 2]},{i}\n"
                                  for i in range(5000)))
    made = 0
    real = csv_rows.UsageRecord

    def counted(*args: object) -> object:
        nonlocal made
        made += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(csv_rows, "UsageRecord", counted)
    assert len(read_usage_csv(f).records) == 5000 and made == 5000  # the row parser: one per row
    made = 0
    src = _source(f)
    batches = list(src.poll(PollContext("drops", T0 + 5 * DAY)))
    assert made == 0 and len(batches) == 1
    batch = batches[0]
    assert batch.totals == [] and all(isinstance(c, UsageColumns) for c in batch.columns)
    assert batch.rows == 5000 and batch.watermark == T0 + 4999 * 60
    report = poll_source(engine, _source(f), T0 + DAY)
    assert made == 0 and report.ok and report.rows == 5000 and report.points_written == 5000
    assert points(engine)[("acct-3", "api_calls", T0 + 10 * 60)] == 10.0


def test_kill_9_during_a_polls_store_stores_the_file_whole_or_not_at_all(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    n = 60_000
    (drops / "a.csv").write_text(HEADER + "".join(
        f"{_iso(T0 + (i // 3000) * 3600)},acct-{i % 3000},{('api_calls', 'seats')[i % 2]},{i % 101}\n" for i in range(n)))
    engine.dispose()

    def work() -> None:
        eng = make_engine(db_url)
        report = poll_source(eng, _source(drops), T0 + DAY)
        os._exit(0 if report.ok else 3)

    def snapshot() -> tuple[int, str | None]:
        """The points and the cursor read in ONE snapshot (a killed client's COMMIT may still land on
        the server while the check reads)."""
        eng = make_engine(db_url)
        level = "REPEATABLE READ" if eng.dialect.name == "postgresql" else "SERIALIZABLE"
        try:
            with eng.connect().execution_options(isolation_level=level) as c, c.begin():
                stored = int(c.execute(sa.text("SELECT COUNT(*) FROM usage_points")).scalar_one())
                cursor = c.execute(sa.text("SELECT cursor FROM source_cursors WHERE source_id = 'drops'")).scalar()
            return stored, cursor
        finally:
            eng.dispose()

    def check() -> None:
        stored, cursor = snapshot()
        assert (stored, cursor is None) in ((0, True), (n, False))  # the file and its cursor, or neither

    kills = _killed_until_done(work, check)
    assert kills >= 1
    assert snapshot()[0] == n
    assert poll_source(engine, _source(drops), T0 + DAY + 60).batches == 0  # remembered: not read again


def _swapped_after(first_opens: int, path: Path, new_text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_drop as the csv source calls it, but after `first_opens` opens of `path` a new version is
    renamed into place (a drop tool replacing the file while the poll reads it)."""
    real = csv_source.open_drop
    opens = 0

    def swapping(name: str, flags: int) -> int:
        nonlocal opens
        fd = real(name, flags)
        opens += 1
        if opens == first_opens:
            tmp = path.with_name(".incoming")
            tmp.write_text(new_text)
            os.replace(tmp, path)
        return fd

    monkeypatch.setattr(csv_source, "open_drop", swapping)


@pytest.mark.parametrize("first_opens", [1, 2])  # after the header's open; after Arrow's (a bad later block)
def test_a_file_replaced_while_it_is_read_stores_nothing_of_either_version(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_opens: int) -> None:
    """The columnar reader opens a file for its header, for Arrow's pass and, after a bad block, for
    the row parser: a version renamed into place in between would mix the header's column order of
    one version with the rows of the other (account and metric swapped). It is not stored; the next
    poll reads the new version whole."""
    f = tmp_path / "u.csv"
    rows = "".join(f"{_iso(T0 + i * 60)},acme,api_calls,5\n" for i in range(3000))
    f.write_text(HEADER + rows + (f"{_iso(T0)},acme,api_calls,-1\n" if first_opens == 2 else ""))
    monkeypatch.setattr(csv_rows, "ARROW_BLOCK_BYTES", 4096)  # the bad row in a later block
    new = "timestamp,metric,account,value\n" + f"{_iso(T0)},api_calls,globex,7\n"
    _swapped_after(first_opens, f, new, monkeypatch)
    src = _source(f)
    report = poll_source(engine, src, T0 + DAY)
    assert points(engine) == {} and report.points_written == 0
    assert [name for name, _ in src.settling] == ["u.csv"]  # told to wait, not rejected
    monkeypatch.undo()
    report = poll_source(engine, _source(f), T0 + DAY)
    assert report.ok and points(engine) == {("globex", "api_calls", T0): 7.0}


@pytest.mark.parametrize("reader", ["columns", "rows"])  # a clean file; one with a bad row the row parser reads
def test_a_file_whose_bucket_total_overflows_is_rejected_and_the_next_files_are_stored(
        engine: Engine, tmp_path: Path, reader: str) -> None:
    """1e308 twice in one minute adds up past a float64: that file is rejected (named, nothing of it
    stored, not read again), and the files after it are stored; before, every poll failed at it and
    no later file was ever read."""
    (tmp_path / "a.csv").write_text(HEADER + f"{_iso(T0)},acme,api_calls,1e308\n{_iso(T0)},acme,api_calls,1e308\n"
                                    + (f"{_iso(T0)},acme,api_calls,-1\n" if reader == "rows" else ""))
    (tmp_path / "b.csv").write_text(HEADER + f"{_iso(T0)},globex,api_calls,3\n")
    first = poll_source(engine, _source(tmp_path), T0 + DAY)
    assert first.ok and points(engine) == {("globex", "api_calls", T0): 3.0}
    [rejected] = [r for r in first.rejected if "nothing stored from it" in r]
    assert rejected.startswith("source 'drops': a.csv rejected, nothing stored from it: ")
    assert "acme" in rejected and "add up to more than the largest number a float64 holds" in rejected
    assert "source 'drops': source 'drops'" not in rejected
    again = poll_source(engine, _source(tmp_path), T0 + DAY)
    assert again.ok and again.rejected == [] and again.points_written == 0  # told once, not read again


@pytest.mark.parametrize("order", ["rejected_last", "rejected_first"])
def test_the_watermark_counts_only_the_stored_rows_never_a_rejected_file(
        engine: Engine, tmp_path: Path, order: str) -> None:
    """A file the store refuses (its bucket total overflows a float64: nothing of it stored) has the
    newest rows of the drop; the watermark stays at the newest STORED row, whether the rejected file
    is the poll's last batch or one before a file that is stored. Before, its ts moved the watermark."""
    bad, good = ("b.csv", "a.csv") if order == "rejected_last" else ("a.csv", "b.csv")
    late = T0 + DAY // 2
    (tmp_path / bad).write_text(HEADER + f"{_iso(late)},acme,api_calls,1e308\n{_iso(late)},acme,api_calls,1e308\n")
    (tmp_path / good).write_text(HEADER + f"{_iso(T0)},globex,api_calls,3\n")
    report = poll_source(engine, _source(tmp_path), T0 + DAY)
    assert report.ok and len(report.rejected) == 1 and points(engine) == {("globex", "api_calls", T0): 3.0}
    state = get_source_state(engine, "drops")
    assert state is not None and state.watermark == T0


def test_new_days_one_row_per_account_and_metric_store_what_the_row_parser_stored_when_staged(
        engine: Engine, twin: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A day's drop has one row per (account, metric): the stage then holds no pairs of its own
    (the rows are the pairs); a new day, a day again with some values changed, and nothing changed
    store, report and mark what the record path does."""
    monkeypatch.setattr(usage_load, "ADBC_MIN_ROWS", 1)
    drops = tmp_path / "drops"
    drops.mkdir()

    def day(name: str, ts: int, bump: set[int], step: int) -> None:
        (drops / name).write_text(HEADER + "".join(
            f"{_iso(ts)},acct-{a},{m},{a + (1.5 if a in bump else 0)}\n" for a in range(50) for m in ("seats", "jobs")))
        os.utime(drops / name, (1_000_000_000 + step, 1_000_000_000 + step))  # read again each step

    src = _source(drops)
    for step, (name, ts, bump) in enumerate([("d1.csv", T0, set()), ("d2.csv", T0 + DAY, set()),
                                             ("d1.csv", T0, {3, 17}), ("d1.csv", T0, {3, 17})]):
        day(name, ts, bump, step)
        now = T0 + 4 * DAY + step * 600
        got = _outcome(engine, poll_source(engine, src, now))
        with monkeypatch.context() as m:
            m.setattr(csv_source, "_read_usage", _row_parser)
            want = _outcome(twin, poll_source(twin, src, now))
        assert got == want
        assert got[3] == 1 and got[5] == [100, 100, 4, 0][step]  # a batch each step; points written
        if step == 2:
            assert got[6] == [("acct-17", "jobs"), ("acct-17", "seats"), ("acct-3", "jobs"), ("acct-3", "seats")]
        with engine.connect() as c, twin.connect() as t:
            q = sa.text("SELECT account_id, metric, bucket_start, last_bucket FROM usage_changes ORDER BY 1, 2, 3, 4")
            assert c.execute(q).all() == t.execute(q).all()
