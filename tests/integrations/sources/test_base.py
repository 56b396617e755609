"""Shared source settings, the registry and the poll window."""

from __future__ import annotations

from integrations.sources.base import (
    BUILTIN_TYPES,
    DEFAULT_EVERY,
    PollContext,
    source_types,
    window,
)
from tests.integrations.sources.helpers import DAY, HOUR, T0, config_problems, source_config


def test_every_builtin_type_is_registered() -> None:
    assert set(BUILTIN_TYPES) <= set(source_types())


def test_common_settings_and_defaults() -> None:
    cfg = source_config('[[sources]]\nid = "d"\ntype = "csv"\npath = "x"\ncron = "*/15 * * * *"\n'
                        'overlap = "3h"\nstale_after = "2d"\nenabled = false\n')
    s = cfg.settings
    assert (s.id, s.type, s.cron, s.every, s.overlap, s.stale_after, s.enabled) == (
        "d", "csv", "*/15 * * * *", None, 3 * HOUR, 2 * DAY, False)
    assert source_config('[[sources]]\nid = "d"\ntype = "csv"\npath = "x"\n').settings.every == DEFAULT_EVERY


def test_common_problems_name_the_field() -> None:
    p = "\n".join(config_problems('[[sources]]\nid = "bad id"\ntype = "http_jsn"\nevery = "5"\n'))
    assert "test.toml:2: sources[0].id: must be letters, digits and _ . : - only (got 'bad id')" in p
    assert "sources[0].type: must be one of csv, http_json, openmeter, sql, stripe_meter (got 'http_jsn'); " \
           "did you mean 'http_json'?" in p
    assert "sources[0].every: invalid duration '5'" in p
    p = "\n".join(config_problems('[[sources]]\nid = "d"\ntype = "csv"\npath = "x"\nevery = "5m"\n'
                                  'cron = "61 * * * *"\n'))
    assert "sources[0].cron: give either every or cron, not both" in p
    assert "sources[0].cron: invalid crontab expression '61 * * * *'" in p


def test_window_reads_the_overlap_aligned_to_the_bucket() -> None:
    assert window(PollContext("s", T0 + 5 * HOUR + 17), overlap=HOUR, backfill=DAY, align=HOUR) == (
        T0 + 5 * HOUR - DAY, T0 + 5 * HOUR + 17)
    ctx = PollContext("s", T0 + 5 * HOUR + 17, watermark=T0 + 4 * HOUR + 120)
    assert window(ctx, overlap=HOUR, backfill=DAY, align=HOUR) == (T0 + 3 * HOUR, T0 + 5 * HOUR + 17)
    future = PollContext("s", T0, watermark=T0 + 10 * DAY)  # a bad timestamp never stops reading
    assert window(future, overlap=HOUR, backfill=DAY, align=60) == (T0 - HOUR, T0)
