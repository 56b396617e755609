"""The service end to end: HTTP endpoints, push ingest over HTTP, jobs, metrics, logs, `usagebot serve`."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from bot.cli.main import main
from bot.config.app import load_config
from bot.serve.service import Service
from bot.service.logs import setup_logging
from integrations.console import ConsoleNotifier
from storage.outbox import list_outbox
from storage.sources import get_source_state
from tests.integrations.sources.helpers import points

ROOT = Path(__file__).resolve().parents[3]
DAY = 86_400
T0 = 1_793_491_200  # 2026-11-01
SECRET = "ingest-secret-42"
RULES = """
[[rule]]
id = "calls-spike"
kind = "spike"
metric = "api_calls"
bucket = "1d"
cooldown = "0"
[rule.baseline]
window = "7d"
min_points = 3
[rule.threshold]
ratio = 3.0
[rule.routing]
channels = ["#usage"]
"""


def _config(tmp_path: Path, db_url: str, extra: str = "") -> Path:
    (tmp_path / "rules.toml").write_text(RULES)
    (tmp_path / "drops").mkdir(exist_ok=True)
    p = tmp_path / "config.toml"
    p.write_text(f"""
[storage]
url = "{db_url}"
[rules]
paths = ["rules.toml"]
[service]
host = "127.0.0.1"
port = 0
admin_channel = "#usagebot-admin"
[scheduler]
leader = "lease"
leader_name = "svc-{tmp_path.name}"
max_wait = "0"
[ingest]
secret = "${{INGEST_SECRET}}"
[[sources]]
id = "drops"
type = "csv"
path = "drops"
min_age = "0"
stale_after = "1d"
{extra}
""")
    return p


@pytest.fixture
def service(tmp_path: Path, db_url: str) -> Iterator[Service]:
    cfg = load_config(_config(tmp_path, db_url), env={"INGEST_SECRET": SECRET})
    svc = Service(cfg, clock=lambda: T0 + 10 * DAY + 60, notifier=ConsoleNotifier(out=io.StringIO()))
    svc.start(scheduler=False)
    try:
        yield svc
    finally:
        svc.stop()


def _url(svc: Service, path: str) -> str:
    assert svc.http is not None
    return f"http://127.0.0.1:{svc.http.port}{path}"


def test_health_readiness_and_metrics_endpoints(service: Service) -> None:
    assert httpx.get(_url(service, "/healthz")).json() == {"status": "ok"}
    ready = httpx.get(_url(service, "/readyz"))
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["checks"] == {"database": "ok", "migrations": "ok", "shutdown": "ok", "scheduler": "ok"}
    service.scheduler.run_all_once()
    m = httpx.get(_url(service, "/metrics"))
    assert m.headers["content-type"].startswith("text/plain; version=0.0.4")
    body = m.text
    for line in ('usagebot_source_polls_total{result="ok",source="drops"} 1',
                 'usagebot_job_runs_total{job="evaluate",result="ok"} 1',
                 "# TYPE usagebot_source_poll_seconds histogram", 'usagebot_source_stale{source="drops"} 0',
                 'usagebot_source_poll_lag_seconds{source="drops"} 0', "usagebot_leader 1",
                 'usagebot_info{replica="'):
        assert line in body, line
    assert httpx.get(_url(service, "/nope")).status_code == 404
    assert httpx.post(_url(service, "/healthz"), content=b"").status_code == 405


def test_push_ingest_over_http(service: Service, engine_for_service: Engine) -> None:
    event = {"specversion": "1.0", "id": "e1", "source": "app", "type": "api_calls", "subject": "acme",
             "time": "2026-11-11T00:00:05Z", "data": {"value": 5}}
    url = _url(service, "/ingest/events")
    r = httpx.post(url, json=[event, dict(event, id="e2")], headers={
        "Authorization": f"Bearer {SECRET}", "Content-Type": "application/cloudevents-batch+json"})
    assert r.status_code == 200 and r.json() == {"accepted": 2, "duplicates": 0, "events": 2}
    again = httpx.post(url, content=json.dumps(event), headers={
        "Authorization": f"Bearer {SECRET}", "Content-Type": "application/cloudevents+json"})
    assert again.json() == {"accepted": 0, "duplicates": 1, "events": 1}
    denied = httpx.post(url, json=[event], headers={"Authorization": "Bearer wrong"})
    assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
    bad = httpx.post(url, json=[dict(event, id="")], headers={"Authorization": f"Bearer {SECRET}",
                                                              "Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["problems"][0]["field"] == "id"
    big = httpx.post(url, content=b"x" * 3_000_000, headers={"Authorization": f"Bearer {SECRET}"})
    assert big.status_code == 413
    assert points(service.engine, "api_calls") == {("acme", "api_calls", T0 + 10 * DAY): 10.0}  # type: ignore[arg-type]
    m = service.metrics
    assert m.value("usagebot_ingest_events_total", result="accepted") == 2
    assert m.value("usagebot_ingest_events_total", result="duplicate") == 1
    assert m.value("usagebot_ingest_requests_total", status=401) == 1


def test_pushed_events_whose_bucket_overflows_are_refused_alone_and_the_admin_told_once(service: Service) -> None:
    """Over HTTP through the service: the refused bucket is named in the answer, the other events are
    stored, and one admin notice per notifier is queued (for #usagebot-admin), once for two requests."""
    url = _url(service, "/ingest/events")
    ev = {"specversion": "1.0", "source": "app", "type": "api_calls", "time": "2026-11-11T00:00:05Z"}
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/cloudevents-batch+json"}
    body = [dict(ev, id="big1", subject="acme", data={"value": 1e308}),
            dict(ev, id="big2", subject="acme", data={"value": 1e308}),
            dict(ev, id="ok", subject="globex", data={"value": 3})]
    first = httpx.post(url, json=body, headers=headers)
    assert first.status_code == 200 and first.json()["accepted"] == 1
    assert [e["id"] for e in first.json()["refused"][0]["events"]] == ["big1", "big2"]
    again = httpx.post(url, json=body, headers=headers)
    assert again.status_code == 200 and again.json()["duplicates"] == 1 and again.json()["refused"]
    assert points(service.engine, "api_calls") == {("globex", "api_calls", T0 + 10 * DAY): 3.0}  # type: ignore[arg-type]
    notices = [r for r in list_outbox(service.engine) if r.idempotency_key.startswith('source-refused:["push",')]  # type: ignore[arg-type]
    assert len(notices) == len(service.notices.notifiers) >= 1
    assert notices[0].payload["routing"]["channels"] == ["#usagebot-admin"]
    assert "account 'acme', metric 'api_calls', bucket 2026-11-11T00:00:00Z" in notices[0].payload["message"]
    assert service.metrics.value("usagebot_source_rejected_total", source="push") == 1


def test_a_polled_source_skipping_a_malformed_item_counts_it_and_tells_the_admin_once(tmp_path: Path,
                                                                                      db_url: str) -> None:
    """on_error = "skip" through the service: the good item is stored, the bad one is one notice for
    #usagebot-admin per notifier (not again on the next poll), and /metrics counts every skip."""
    from tests.integrations.sources.fake_http import FakeHttp

    at = "2026-11-11T00:00:00Z"
    items = [{"acct": "acme", "v": 4, "t": at}, {"acct": "acme", "v": "four", "t": at}]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, items))
        cfg = load_config(_config(tmp_path, db_url, f"""
[[sources]]
id = "api"
type = "http_json"
url = "{srv.url('/usage')}"
metric = "api_calls"
on_error = "skip"
[sources.fields]
account = "acct"
value = "v"
timestamp = "t"
"""), env={"INGEST_SECRET": SECRET})
        svc = Service(cfg, clock=lambda: T0 + 10 * DAY + 60, notifier=ConsoleNotifier(out=io.StringIO()))
        svc.start(scheduler=False)
        try:
            for now in (T0 + 10 * DAY + 60, T0 + 10 * DAY + 120):
                report = svc.poll(svc.sources["api"], now)
                assert report.ok and report.skipped == 1
            notices = [r for r in list_outbox(svc.engine) if r.idempotency_key.startswith("source-skipped:api:")]  # type: ignore[arg-type]
            assert len(notices) == len(svc.notices.notifiers) >= 1
            assert notices[0].payload["routing"]["channels"] == ["#usagebot-admin"]
            assert "field 'v' (value): expected a number, got 'four'" in notices[0].payload["message"]
            assert svc.metrics.value("usagebot_source_skipped_total", source="api") == 2
            # skipped items count in skipped_total only: rejected_total is parts rejected and buckets refused
            assert svc.metrics.value("usagebot_source_rejected_total", source="api") == 0
            assert points(svc.engine, "api_calls") == {("acme", "api_calls", T0 + 10 * DAY): 4.0}  # type: ignore[arg-type]
        finally:
            svc.stop()


@pytest.fixture
def engine_for_service(service: Service) -> Engine:
    assert service.engine is not None
    return service.engine


def test_run_once_polls_evaluates_and_delivers_an_alert(tmp_path: Path, db_url: str) -> None:
    cfg = load_config(_config(tmp_path, db_url, '[evaluation]\nfirst_run = "notify"'), env={"INGEST_SECRET": SECRET})
    rows = [f"2026-11-{d:02d}T00:00:00Z,acme,api_calls,{500 if d == 10 else 100}" for d in range(1, 11)]
    (tmp_path / "drops" / "usage.csv").write_text("timestamp,account,metric,value\n" + "\n".join(rows) + "\n")
    out = io.StringIO()
    svc = Service(cfg, clock=lambda: T0 + 10 * DAY + 60, notifier=ConsoleNotifier(out=out))
    try:
        results = svc.run_once()
    finally:
        svc.stop()
    assert results == {"poll:drops": "ok", "freshness": "ok", "evaluate": "ok", "deliver": "ok", "prune": "ok"}
    assert "FIRED · acme · api_calls · rule calls-spike" in out.getvalue() and "#usage" in out.getvalue()
    assert svc.metrics.value("usagebot_alerts_total", rule="calls-spike", event="fired") == 1
    assert svc.metrics.value("usagebot_deliveries_total", result="sent") == 1
    assert svc.metrics.count("usagebot_evaluation_seconds", reason="bucket_closed") == 1


def test_first_evaluation_records_conditions_and_sends_one_admin_summary(tmp_path: Path, db_url: str) -> None:
    """The shipped first_run = "digest": a condition already true when the book is first evaluated is
    recorded (an open episode, visible in /usage) but not sent to its owner; the admin channel gets one
    summary. A condition that starts later is sent as usual."""
    from storage.episodes import load_states

    cfg = load_config(_config(tmp_path, db_url), env={"INGEST_SECRET": SECRET})
    assert cfg.evaluation.first_run == "digest"
    rows = [f"2026-11-{d:02d}T00:00:00Z,acme,api_calls,{500 if d == 10 else 100}" for d in range(1, 11)]
    (tmp_path / "drops" / "usage.csv").write_text("timestamp,account,metric,value\n" + "\n".join(rows) + "\n")
    out = io.StringIO()
    now = [T0 + 10 * DAY + 60]
    svc = Service(cfg, clock=lambda: now[0], notifier=ConsoleNotifier(out=out))
    try:
        svc.run_once()
        text = out.getvalue()
        assert "FIRED · acme" not in text  # the owner is not paged
        assert "FIRST_RUN" in text and "To: #usagebot-admin" in text and "1 condition(s) already true" in text
        (s,) = [s for s in load_states(svc.engine).values() if s.rule_id == "calls-spike"]  # type: ignore[arg-type]
        assert s.status == "firing"
        # a spike that starts after the first evaluation is sent as usual
        for d in range(11, 16):  # quiet days, then a new spike on the 15th
            (tmp_path / "drops" / f"day{d}.csv").write_text(
                f"timestamp,account,metric,value\n2026-11-{d:02d}T00:00:00Z,acme,api_calls,{100 if d < 15 else 900}\n")
            now[0] = T0 + d * DAY + 60
            svc.run_once()
        assert "FIRED · acme · api_calls · rule calls-spike" in out.getvalue()
    finally:
        svc.stop()


def test_a_source_that_stops_delivering_alerts_the_admin_channel(tmp_path: Path, db_url: str) -> None:
    cfg = load_config(_config(tmp_path, db_url), env={"INGEST_SECRET": SECRET})
    out = io.StringIO()
    now = [T0]
    svc = Service(cfg, clock=lambda: now[0], notifier=ConsoleNotifier(out=out))
    try:
        svc.run_once()  # the drops folder is empty: nothing new since it was set up
        now[0] = T0 + DAY + 61
        svc.scheduler.run_all_once()
    finally:
        svc.stop()
    text = out.getvalue()
    assert "STALE · source drops" in text and "To: #usagebot-admin" in text
    state = get_source_state(svc.engine, "drops")  # type: ignore[arg-type]
    assert state is not None and state.stale_since == T0 + DAY + 61


def _unreachable_api(auth: str = "") -> str:
    """A config's http_json source "api" on a port nothing listens on (its `auth` table, if any)."""
    return f"""
[[sources]]
id = "api"
type = "http_json"
url = "http://127.0.0.1:9/usage"
metric = "api_calls"
retries = 0
timeout = "1s"
{auth}[sources.fields]
account = "a"
value = "v"
timestamp = "t"
"""


def test_json_logs_carry_fields_and_never_secrets(tmp_path: Path, db_url: str) -> None:
    token = "bearer-token-do-not-log"
    extra = _unreachable_api(f'[sources.auth]\ntype = "bearer"\ntoken = "{token}"\n')
    cfg = load_config(_config(tmp_path, db_url, extra), env={"INGEST_SECRET": SECRET})
    stream = io.StringIO()
    handler = setup_logging("json", "info", stream)
    try:
        svc = Service(cfg, clock=lambda: T0, notifier=ConsoleNotifier(out=io.StringIO()))
        try:
            results = svc.run_once()
        finally:
            svc.stop()
    finally:
        logging.getLogger().removeHandler(handler)
    assert results["poll:api"] == "failed"  # the job ran; the poll itself failed and was recorded
    assert results["poll:drops"] == "ok"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [x for x in lines if x.get("event") == "poll_failed"]
    assert failed and failed[0]["source"] == "api" and failed[0]["level"] == "warning"
    assert "connection failed" in failed[0]["message"]
    assert token not in stream.getvalue() and SECRET not in stream.getvalue()
    assert svc.metrics.value("usagebot_source_polls_total", source="api", result="error") == 1


def test_serve_once_exits_1_when_a_source_fails_and_says_which(tmp_path: Path, db_url: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen: `serve --once` under cron printed "ok" for a source that could not be reached and exited 0."""
    monkeypatch.setenv("INGEST_SECRET", SECRET)
    extra = _unreachable_api()
    out, err = io.StringIO(), io.StringIO()
    try:
        code = main(["serve", "--config", str(_config(tmp_path, db_url, extra)), "--once"], out=out, err=err)
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if not getattr(h, "_usagebot", False)]
    results = json.loads(out.getvalue())
    assert code == 1 and results["poll:api"] == "failed" and results["poll:drops"] == "ok"
    assert results["evaluate"] == "ok"  # the other jobs still ran
    assert "Traceback" not in err.getvalue()


def test_readiness_reports_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    url = "postgresql://bot:pa55word@127.0.0.1:9/usagebot"
    cfg = load_config(_config(tmp_path, url), env={"INGEST_SECRET": SECRET})
    svc = Service(cfg)
    ok, checks = svc.readiness()
    assert not ok and checks["database"].startswith("unreachable: OperationalError")
    assert "pa55word" not in json.dumps(checks)
    svc.leadership.release()  # type: ignore[union-attr]


def test_usagebot_serve_once_from_the_command_line(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_SECRET", SECRET)
    path = _config(tmp_path, db_url)
    out, err = io.StringIO(), io.StringIO()
    try:
        assert main(["serve", "--config", str(path), "--once"], out=out, err=err) == 0
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if not getattr(h, "_usagebot", False)]
    assert json.loads(out.getvalue())["poll:drops"] == "ok"
    assert main(["serve"], out=out, err=err) == 2
    monkeypatch.delenv("INGEST_SECRET")
    err = io.StringIO()
    assert main(["serve", "--config", str(path)], out=out, err=err) == 1
    assert "ingest.secret: environment variable INGEST_SECRET is not set" in err.getvalue()


class SlowSource:
    """A source whose poll outlives the shutdown timeout."""

    id = "drops"

    def __init__(self) -> None:
        import threading

        self.started = threading.Event()

    def poll(self, ctx):  # type: ignore[no-untyped-def]
        import time

        self.started.set()
        time.sleep(5)  # far past the 1 s shutdown timeout, so a loaded machine cannot blur the two
        return iter(())

    def close(self) -> None:
        return None


def test_shutdown_waits_at_most_shutdown_timeout(tmp_path: Path, db_url: str) -> None:
    import time
    from dataclasses import replace

    cfg = load_config(_config(tmp_path, db_url), env={"INGEST_SECRET": SECRET})
    cfg = replace(cfg, service=replace(cfg.service, shutdown_timeout=1))
    slow = SlowSource()
    svc = Service(cfg, sources={"drops": slow}, notifier=ConsoleNotifier(out=io.StringIO()))
    svc.start(http=False)
    assert slow.started.wait(5)
    began = time.monotonic()
    svc.stop()
    assert 0.9 <= time.monotonic() - began < 4  # the timeout, not the poll's 5 s
    assert not svc.scheduler.is_leader
    deadline = time.monotonic() + 8  # let the abandoned poll finish before the test database goes away
    while svc.scheduler.state["poll:drops"].runs == 0 and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_source_that_is_behind_is_polled_again_at_once_until_it_caught_up(tmp_path: Path, db_url: str,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The poll job polls a source that read a shorter window (too many pages for the whole) again at once:
    one run of the job catches up a source 10 days behind, each partial poll logged."""
    from integrations.sources.base import CatchUp
    from tests.integrations.sources.fake_http import FakeHttp
    from tests.integrations.sources.test_catch_up import NOW, _hourly, _serve, _toml

    with FakeHttp() as srv:
        _serve(srv, _hourly(10))
        cfg = load_config(_config(tmp_path, db_url, _toml(srv.url("/usage"), max_pages=9, extra='every = "1h"')),
                          env={"INGEST_SECRET": SECRET})
        svc = Service(cfg, clock=lambda: NOW, notifier=ConsoleNotifier(out=io.StringIO()))
        try:
            with caplog.at_level(logging.INFO):
                assert svc.run_once()["poll:billing"] == "ok"
            polls = svc.metrics.value("usagebot_source_polls_total", source="billing", result="ok")
            state = get_source_state(svc.engine, "billing")  # type: ignore[arg-type]
            assert len(points(svc.engine, "api_calls")) == 480  # type: ignore[arg-type]
        finally:
            svc.stop()
    assert polls is not None and polls >= 5
    assert state is not None and CatchUp.parse(state.cursor) is None
    behind = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "poll_behind"]
    assert len(behind) == polls - 1 and all("caught up in part: read up to" in m for m in behind)


def test_in_the_running_service_a_source_behind_is_polled_again_by_its_job_not_in_a_loop(
        tmp_path: Path, db_url: str) -> None:
    """The running service moves the poll job of a source that is behind a second ahead: each run polls
    once and frees its worker (evaluation, delivery and the leader check share the scheduler's workers;
    a loop in the job held one for up to an hour), and the source still catches up by itself."""
    import time

    from integrations.sources.base import CatchUp
    from tests.integrations.sources.fake_http import FakeHttp
    from tests.integrations.sources.test_catch_up import NOW, _hourly, _serve, _toml

    with FakeHttp() as srv:
        _serve(srv, _hourly(10))
        cfg = load_config(_config(tmp_path, db_url, _toml(srv.url("/usage"), max_pages=9, extra='every = "1h"')),
                          env={"INGEST_SECRET": SECRET})
        svc = Service(cfg, clock=lambda: NOW, notifier=ConsoleNotifier(out=io.StringIO()))
        svc.start(http=False)
        try:
            deadline = time.monotonic() + 90  # waits for the outcome; no timing is asserted
            state = None
            while time.monotonic() < deadline:
                state = get_source_state(svc.engine, "billing")  # type: ignore[arg-type]
                if state is not None and state.watermark is not None and CatchUp.parse(state.cursor) is None:
                    break
                time.sleep(0.2)
        finally:
            svc.stop()  # waits for a running job: the state can be read before its run is counted
        polls = svc.metrics.value("usagebot_source_polls_total", source="billing", result="ok")
        runs = svc.scheduler.state["poll:billing"].runs
        stored = len(points(svc.engine, "api_calls"))  # type: ignore[arg-type]
    assert state is not None and CatchUp.parse(state.cursor) is None and stored == 480
    assert polls is not None and polls >= 5 and runs >= polls  # one poll per run of the job
