"""The chart of an alert in its Slack thread: files_upload_v2 against the fake's upload API, once,
across retries and lost responses; skipped (the alert still delivered) without files:write."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from integrations.slack.charts import chart_filename
from tests.integrations.slack.scenario import FIRED, SPIKE_DAY, Scenario

PNG = b"\x89PNG\r\n\x1a\n"


def _fire(engine, clock, fake, config):
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    report = sc.deliver(n)
    return sc, n, report


def test_a_fired_alert_gets_its_chart_in_the_thread_by_the_upload_api(engine, fake, config, clock):
    _, _, report = _fire(engine, clock, fake, config)
    assert report.failed == 0
    for ch in (fake.channel("#usage-alerts"), fake.dm_with("U0ALICE01")):
        parent = ch.messages[0]
        files = fake.files_in(ch.id, parent["ts"])
        assert len(files) == 1, ch.id
        f = files[0]
        assert f["content"].startswith(PNG) and len(f["content"]) > 5_000
        assert f["filename"].startswith("usagebot-chart-") and f["title"].startswith("Usage chart · Acme Corp")
        assert parent["reply_count"] == 1
    methods = [c.method for c in fake.calls]
    assert methods.count("files.getUploadURLExternal") == 2 and methods.count("upload") == 2
    assert methods.count("files.completeUploadExternal") == 2
    done = fake.calls_of("files.completeUploadExternal")[0].params
    assert done["thread_ts"] and done["channel_id"]


def test_delivering_again_uploads_no_second_chart(engine, fake, config, clock):
    sc, n, _ = _fire(engine, clock, fake, config)
    with engine.begin() as conn:  # the outbox rows delivered again (as after a lost "sent" mark)
        conn.execute(sa.text("UPDATE outbox SET status = 'pending', sent_at = NULL"))
    sc.deliver(n)
    assert len(fake.calls_of("files.completeUploadExternal")) == 2
    assert len(fake.files_in("#usage-alerts")) == 1


def test_a_lost_upload_response_is_found_in_the_thread_not_uploaded_twice(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    fake.fail("files.completeUploadExternal", "drop", count=1)  # Slack shares it; we never hear back
    sc.deliver(n)
    shared = len(fake.files_in("#usage-alerts")) + len(fake.files_in(fake.dm_with("U0ALICE01").id))
    assert shared == 2
    with engine.connect() as conn:
        steps = dict(conn.execute(sa.text("SELECT step, ts FROM slack_delivery_steps WHERE step LIKE '%|chart'")).all())
    unknown = [s for s, ts in steps.items() if ts is None]
    assert len(unknown) == 1  # the outcome of that one is unknown
    step = unknown[0]
    channel = "#usage-alerts" if "channel:" in step else fake.dm_with("U0ALICE01").id
    parent = fake.channel(channel).messages[0]
    n.charts.attach(step.removesuffix("|chart"), fake.channel(channel).id, parent["ts"], 1, "Acme Corp")
    assert len(fake.files_in(channel)) == 1  # found by its name: not uploaded again
    assert fake.files_in(channel)[0]["filename"] == chart_filename(step)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT ts FROM slack_delivery_steps WHERE step = :s"), {"s": step}).scalar()


def test_without_files_write_the_alert_is_delivered_and_the_chart_skipped_once(engine, fake, config, clock, caplog):
    fake.scopes.discard("files:write")
    with caplog.at_level(logging.WARNING, logger="integrations.slack.charts"):
        sc, n, report = _fire(engine, clock, fake, config)
    assert report.failed == 0 and report.sent >= 1
    assert len(fake.channel("#usage-alerts").messages) == 1 and fake.files_in("#usage-alerts") == []
    assert "files:write" in caplog.text
    calls = len(fake.calls_of("files.getUploadURLExternal"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE outbox SET status = 'pending', sent_at = NULL"))
    sc.deliver(n)
    assert len(fake.calls_of("files.getUploadURLExternal")) == calls  # not asked again for every retry
