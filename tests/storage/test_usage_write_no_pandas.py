"""A process that writes usage never imports pandas (issue 15 item 2): pyarrow imports it on the first
pa.array / pa.table of Python or numpy values, Array.to_numpy and take with numpy indices (0.7-3 s of
a poll's first write on the bench machine). Each write path of storage.usage_load, in a fresh
subprocess, on SQLite and PostgreSQL: bulk_write of columns (the ADBC staging file on SQLite),
upsert_usage of records (small: temporary tables; large: the staging file), write_points inside a
caller's transaction, load_usage of two runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from storage import usage_load
    from storage.columnar import arrow_strings
    from storage.db import make_engine, write_transaction
    from storage.usage import load_usage, upsert_usage, write_points
    from storage.usage_values import UsageColumns
    from integrations.sources.records import UsageRecord

    engine = make_engine(sys.argv[1])
    n, day = 25_000, 86_400 * 20_000  # above ADBC_MIN_ROWS: SQLite stages in a file
    accounts = [f"acc-{i:05d}" for i in range(n)]
    cols = UsageColumns(arrow_strings(accounts), arrow_strings(["calls"] * n),
                        np.full(n, day, dtype=np.int64), np.arange(n, dtype=np.float64))
    usage_load.bulk_write(engine, [cols], base_step=60)
    upsert_usage(engine, [UsageRecord(a, "calls", day + 86_400, 1.0) for a in accounts])
    upsert_usage(engine, [UsageRecord("acc-00001", "seats", day, 2.0)])
    with write_transaction(engine) as conn:
        write_points(conn, [("acc-00002", "seats", day, 3.0), ("acc-00003", "seats", day, 4.0)])
        write_points(conn, [("acc-00002", "seats", day, 1.0)], additive=True)
    usage_load.RUN_ROWS = 10_000  # several sorted runs, summed by the database
    load_usage(engine, [[UsageRecord(a, "calls", day + 2 * 86_400, 1.0) for a in accounts]] * 2)
    print("pandas" in sys.modules, [m for m in sys.modules if m.startswith("pandas")][:3])
""")


def test_no_usage_write_imports_pandas(engine: Engine, db_url: str) -> None:
    pytest.importorskip("pandas")  # installed (pyarrow finds it): otherwise nothing to check
    done = subprocess.run([sys.executable, "-c", CHILD, db_url], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "False", done.stdout
    with engine.connect() as c:  # every write stored
        assert c.execute(sa.text("SELECT COUNT(*), SUM(value) FROM usage_points")).one() == (
            3 * 25_000 + 3, sum(range(25_000)) + 25_000 + 2 * 25_000 + 2.0 + 4.0 + 4.0)
