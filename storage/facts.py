"""What a database holds, for `usagebot check --db` (rules.lint.DataFacts)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from rules.lint import DataFacts, MetricFacts, facts_of
from storage.accounts import list_accounts
from storage.db import redact_url
from storage.usage import accounts_with_usage

# From the bookkeeping tables, not usage_points: accounts per metric from usage_first_seen, the
# delivered buckets and their smallest gap (the data's resolution) from usage_coverage.
_METRICS = """
SELECT c.metric, MIN(c.bucket_start), MAX(c.bucket_start), MIN(c.gap),
       (SELECT COUNT(*) FROM usage_first_seen f WHERE f.metric = c.metric)
FROM (SELECT metric, bucket_start,
             bucket_start - LAG(bucket_start) OVER (PARTITION BY metric ORDER BY bucket_start) AS gap
      FROM usage_coverage) c
GROUP BY c.metric
"""


def data_facts(engine: Engine) -> DataFacts:
    with engine.connect() as conn:
        metrics = {m: MetricFacts(int(n), int(lo), int(hi), None if gap is None else int(gap))
                   for m, lo, hi, gap, n in conn.exec_driver_sql(_METRICS)}
    source = f"the database ({redact_url(engine.url.render_as_string(hide_password=False))})"
    return facts_of(source, metrics, set(accounts_with_usage(engine)), list_accounts(engine))
