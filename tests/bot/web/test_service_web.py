"""The web UI in the running service (real sockets) and in `usagebot ui`; the [web] section; the
episode link in Slack alerts."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bot.config.app import check_config, load_config
from bot.serve.service import Service
from integrations.console import ConsoleNotifier
from integrations.slack.render import EpisodeView, SlackRenderer
from integrations.slack.template_check import sample_alert
from tests.bot.web.conftest import NOW, TOKEN, Book
from tests.bot.web.helpers import free_port, service_config

ROOT = Path(__file__).resolve().parents[3]


def _config(tmp_path: Path, db: Path, web: str) -> Path:
    return service_config(tmp_path / "config.toml", db, web)


def _service(tmp_path: Path, demo_book: Book, web: str) -> Service:
    db = tmp_path / "svc.db"
    shutil.copy(demo_book.path, db)
    cfg = load_config(_config(tmp_path, db, web), env={"WEB_TOKEN": TOKEN})
    svc = Service(cfg, clock=lambda: NOW, notifier=ConsoleNotifier(out=io.StringIO()))
    svc.start(scheduler=False)
    return svc


WEB = """[web]
public_url = "https://usagebot.example.com"
tokens = ["${WEB_TOKEN}"]
"""


def test_the_service_serves_the_ui_beside_its_endpoints_only_when_configured(tmp_path: Path, demo_book: Book) -> None:
    svc = _service(tmp_path, demo_book, WEB)
    try:
        base = f"http://127.0.0.1:{svc.http.port}"  # type: ignore[union-attr]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.get(f"{base}/alerts", headers=auth)
        assert r.status_code == 200 and "<h1>Alerts</h1>" in r.text
        first = httpx.get(f"{base}/alerts?format=json", headers=auth).json()["alerts"][0]
        assert httpx.get(f"{base}/episodes/{first['id']}", headers=auth).status_code == 200
        assert httpx.get(f"{base}/alerts").status_code == 401
        assert httpx.get(f"{base}/alerts", headers={"Accept": "text/html"}).status_code == 302
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}  # the service's own paths win
        assert httpx.get(f"{base}/metrics").status_code == 200
        assert httpx.get(f"{base}/logout").status_code == 405  # no state-changing GET
        posted = httpx.post(f"{base}/alerts", headers=auth)  # pages take GET only
        assert posted.status_code == 405 and posted.headers["Allow"] == "GET"
        text = httpx.get(f"{base}/metrics").text
        assert 'usagebot_http_requests_total{route="web",status="200"}' in text
    finally:
        svc.stop()
    svc = _service(tmp_path / "off", demo_book, "") if (tmp_path / "off").mkdir() is None else None
    try:
        assert svc is not None
        assert httpx.get(f"http://127.0.0.1:{svc.http.port}/alerts").status_code == 404  # type: ignore[union-attr]
    finally:
        svc.stop()  # type: ignore[union-attr]


@pytest.mark.parametrize(("web", "says"), [
    ("[web]\npublic_url = \"https://x.example.com\"\n", "the web UI needs a way in"),
    ("[web]\ntokens = [\"short\"]\n", "at least 16 characters"),
    ("[web]\npublic_url = \"ftp://x\"\nanonymous = true\n", "must be an absolute http(s) URL"),
    ("[web]\npublic_url = \"https://x.example.com/usagebot\"\nanonymous = true\n", "root of its host name"),
    ("[web]\nslack_client_id = \"1.2\"\nanonymous = true\n", "needs both slack_client_id and slack_client_secret"),
    ("[web]\nslack_client_id = \"1.2\"\nslack_client_secret = \"abc\"\npublic_url = \"https://x.example.com\"\n"
     "session_secret = \"" + "k" * 40 + "\"\n", "slack_team_id"),
    ("[web]\nsession_secret = \"short\"\nanonymous = true\n", "at least 32 characters"),
    ("[web]\nanonymous = true\npage_sise = 10\n", "did you mean 'page_size'"),
])
def test_web_section_problems_name_the_field(tmp_path: Path, web: str, says: str) -> None:
    _, problems = check_config(_config(tmp_path, tmp_path / "x.db", web))
    assert any(says in str(p) and "web" in str(p) for p in problems), [str(p) for p in problems]


def test_slack_alerts_link_to_the_episode_page(tmp_path: Path) -> None:
    web = WEB + "\n[slack]\nbot_token = \"xoxb-test-token\"\ndefault_channel = \"#alerts\"\n"
    cfg = load_config(_config(tmp_path, tmp_path / "x.db", web), env={"WEB_TOKEN": TOKEN})
    renderer = SlackRenderer(cfg.slack)
    msg = renderer.alert(sample_alert(), EpisodeView(42, "firing", "fired", 1_795_478_400))
    flat = json.dumps(msg.blocks)
    assert "<https://usagebot.example.com/episodes/42|Why did this fire?>" in flat
    follow = renderer.followup({**sample_alert(), "event": "resolved"}, EpisodeView(42, "resolved", "resolved", 1))
    assert "https://usagebot.example.com/episodes/42" in json.dumps(follow.blocks)
    plain = load_config(_config(tmp_path, tmp_path / "x.db", web.replace('public_url = "https://usagebot.example.com"',
                                                                          "")), env={"WEB_TOKEN": TOKEN})
    assert "/episodes/" not in json.dumps(SlackRenderer(plain.slack).alert(sample_alert(), EpisodeView(
        42, "firing", "fired", 1)).blocks)


def test_usagebot_ui_serves_the_demo_book_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli.main", "ui", "--port", str(port), "--data-dir",
                             str(tmp_path / "data")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and "http://" not in line:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert proc.poll() is None or line, proc.stderr.read()  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}/" in line
        r = httpx.get(f"http://127.0.0.1:{port}/alerts?format=json")
        assert r.status_code == 200 and r.json()["count"] > 0  # the demo book, made first
        assert (tmp_path / "data" / "demo.db").exists()
    finally:
        proc.terminate()
        proc.wait(10)
    refused = subprocess.run([sys.executable, "-m", "bot.cli.main", "ui", "--host", "0.0.0.0", "--data-dir",
                              str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "no sign-in" in refused.stderr


def test_config_check_says_whether_the_web_ui_is_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.cli.main import main

    monkeypatch.setenv("WEB_TOKEN", TOKEN)
    out = io.StringIO()
    assert main(["config", "check", str(_config(tmp_path, tmp_path / "x.db", WEB))], out=out, err=io.StringIO()) == 0
    assert "web UI:     on (tokens) at https://usagebot.example.com" in out.getvalue()
    out = io.StringIO()
    assert main(["config", "check", str(_config(tmp_path, tmp_path / "x.db", ""))], out=out, err=io.StringIO()) == 0
    assert "web UI:     off" in out.getvalue()
