"""The web UI and the backtest report in a real browser (headless Chromium): sign in with Slack
through the fake OIDC endpoints, the pages' content, the filter form, paging, charts, screenshots."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bot.cli.demo import SHIPPED_RULES, run_demo
from bot.config.app import load_config
from bot.serve.service import Service
from integrations.console import ConsoleNotifier
from integrations.sources.demo import DEFAULT_END
from rules.loader import load_rules
from tests.bot.web.helpers import free_port, service_config
from tests.fakes.slack_server import FakeSlack

NOW = DEFAULT_END + 3600
CLIENT_ID, CLIENT_SECRET = "3333.4444", "browser-oidc-secret"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeSlack, Path]]:
    d = tmp_path_factory.mktemp("browser-site")
    run_demo(load_rules([str(SHIPPED_RULES)]), io.StringIO(), data_dir=d / "data", end=DEFAULT_END)
    db = d / "svc.db"
    shutil.copy(d / "data" / "demo.db", db)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    with FakeSlack.running() as fake:
        fake.add_user("U0ALICE01", "alice@example.com", "Alice Example")
        fake.add_oidc_client(CLIENT_ID, CLIENT_SECRET, f"{public}/auth/slack")
        fake.oidc_user = "U0ALICE01"
        cfg = service_config(d / "config.toml", db, f"""
[slack]
bot_token = "{fake.token}"
base_url = "{fake.api_url}"
[web]
public_url = "{public}"
session_secret = "{'b' * 40}"
slack_client_id = "{CLIENT_ID}"
slack_client_secret = "{CLIENT_SECRET}"
slack_team_id = "T0TEAM001"
page_size = 20
""", port)
        svc = Service(load_config(cfg), clock=lambda: NOW, notifier=ConsoleNotifier(out=io.StringIO()))
        svc.start(scheduler=False)
        try:
            yield public, fake, d / "data"
        finally:
            svc.stop()


def _follow(browser, how: str, what: str) -> None:
    """Click the element and wait for the page it leads to: click() returns before the browser has
    navigated, so reading current_url at once may still see the old page (a loaded machine did).

    The old page is marked by a window property that only it holds; a new document starts without
    it. Element staleness is not used: while the page is being swapped Chromium may answer a
    query about the old element with "Node with given id does not belong to the document" (a
    plain WebDriverException, not StaleElementReferenceException; CI saw it), and a script run
    mid-navigation can fail the same way, so such an answer means "not there yet"."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("window.__usagebot_old_page = true;")
    browser.find_element(how, what).click()

    def arrived(b) -> bool:
        try:
            return bool(b.execute_script(
                "return window.__usagebot_old_page === undefined"
                " && document.readyState === 'complete';"))
        except WebDriverException:
            return False

    WebDriverWait(browser, 20).until(arrived)


def _signed_in(browser, public: str) -> None:
    browser.get(f"{public}/alerts")
    if urlsplit(browser.current_url).path == "/login":
        _follow(browser, "link text", "Sign in with Slack")
    assert urlsplit(browser.current_url).path == "/alerts", browser.current_url


def test_sign_in_with_slack_then_the_alert_list(browser, site, shots: Path) -> None:
    public, fake, _ = site
    browser.delete_all_cookies()
    browser.get(f"{public}/alerts?state=firing")
    assert urlsplit(browser.current_url).path == "/login"
    browser.save_screenshot(str(shots / "login.png"))
    _follow(browser, "link text", "Sign in with Slack")  # -> the fake's authorize -> our callback
    assert browser.current_url == f"{public}/alerts?state=firing"
    assert "Alice Example" in browser.find_element("css selector", "header .who").text
    cookie = browser.get_cookie("usagebot_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    rows = browser.find_elements("css selector", "table.alerts tbody tr[data-episode]")
    assert rows and all("firing" in r.find_element("css selector", ".badge").text for r in rows)
    browser.save_screenshot(str(shots / "alerts.png"))
    assert (shots / "alerts.png").stat().st_size > 10_000
    assert len(fake.calls_of("openid.connect.token")) >= 1


def test_filter_form_and_paging(browser, site, shots: Path) -> None:
    public, _, _ = site
    _signed_in(browser, public)
    browser.get(f"{public}/alerts")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("name", "kind")).select_by_visible_text("quota")
    _follow(browser, "css selector", "form.filters button[type=submit]")
    assert "kind=quota" in browser.current_url
    kinds = [r.find_elements("css selector", "td")[4].text for r in
             browser.find_elements("css selector", "table.alerts tbody tr[data-episode]")]
    assert kinds and all(k.endswith("quota") for k in kinds)
    first_page = [r.get_attribute("data-episode") for r in
                  browser.find_elements("css selector", "table.alerts tbody tr[data-episode]")]
    assert len(first_page) == 20
    _follow(browser, "css selector", "a[rel=next]")
    second = [r.get_attribute("data-episode") for r in
              browser.find_elements("css selector", "table.alerts tbody tr[data-episode]")]
    assert second and not set(second) & set(first_page) and "kind=quota" in browser.current_url
    browser.save_screenshot(str(shots / "alerts-quota-page2.png"))


def test_episode_page_shows_why_with_its_chart(browser, site, shots: Path) -> None:
    public, _, _ = site
    _signed_in(browser, public)
    browser.get_log("browser")  # what earlier pages logged
    browser.get(f"{public}/alerts?kind=drop&state=firing")
    _follow(browser, "css selector", "table.alerts tbody tr[data-episode] td a")
    assert "/episodes/" in browser.current_url
    body = browser.find_element("tag name", "main").text
    for needle in ("Why did this fire", "Usual level (baseline)", "Threshold", "Rule version", "Every transition",
                   "fired"):
        assert needle in body, needle
    chart = browser.find_element("css selector", "svg.chart")
    assert chart.size["width"] > 500 and chart.size["height"] > 100
    assert browser.find_elements("css selector", "svg.chart .zero-axis")
    assert browser.find_elements("css selector", "svg.chart g.marker-fired")
    browser.save_screenshot(str(shots / "episode.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []  # nothing blocked by the Content-Security-Policy, nothing missing


def test_account_page_has_a_chart_per_metric(browser, site, shots: Path) -> None:
    public, _, _ = site
    _signed_in(browser, public)
    browser.get(f"{public}/alerts?kind=drop")
    _follow(browser, "css selector", "table.alerts tbody tr[data-episode] td:nth-child(4) a")
    assert "/accounts/" in browser.current_url
    charts = browser.find_elements("css selector", "main svg.chart")
    assert len(charts) >= 3 and all(c.size["height"] > 100 for c in charts)
    titles = " ".join(c.find_element("css selector", "title").get_attribute("textContent") for c in charts)
    assert "per day" in titles and "billing period to date" in titles
    browser.save_screenshot(str(shots / "account.png"))


def test_sign_out_is_a_post_and_ends_the_session(browser, site) -> None:
    public, _, _ = site
    _signed_in(browser, public)
    _follow(browser, "css selector", "form[action='/logout'] button")
    assert urlsplit(browser.current_url).path == "/login"
    browser.get(f"{public}/alerts")
    assert urlsplit(browser.current_url).path == "/login"


def test_the_backtest_report_renders_offline(browser, site, tmp_path: Path, shots: Path) -> None:
    from bot.cli.main import main

    _, _, data = site
    report = tmp_path / "report.html"
    code = main(["backtest", "--rules", str(SHIPPED_RULES), "--usage", str(data / "demo-usage.csv"), "--accounts",
                 str(data / "demo-accounts.csv"), "--report", str(report), "--labels", str(data / "demo-labels.csv")],
                out=io.StringIO(), err=io.StringIO())
    assert code == 0
    browser.get(report.as_uri())
    assert browser.find_element("tag name", "h1").text.startswith("Backtest ")
    assert len(browser.find_elements("css selector", "svg.chart")) >= 3
    assert browser.find_elements("css selector", "table.scores td.recall")
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == []  # nothing loaded from anywhere: one self-contained file
    browser.save_screenshot(str(shots / "report.png"))
