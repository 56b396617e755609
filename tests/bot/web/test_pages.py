"""The web UI's pages on an evaluated demo book: alert list filters and pages, the episode record,
the account charts; everything read only."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from integrations.slack.actions import EpisodeActions
from storage.episodes import episodes_table
from storage.models import TABLES
from tests.bot.web.conftest import NOW, Book, make_ui
from tests.bot.web.helpers import data, get, text


def _episodes(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(episodes_table).order_by(episodes_table.c.id))]


def test_root_redirects_to_the_alert_list_newest_first(book_engine: Engine, demo_book: Book) -> None:
    ui = make_ui(book_engine, demo_book.rules)
    resp = get(ui, "/")
    assert resp.status == 302 and resp.headers["Location"] == "/alerts"
    page = data(ui, "/alerts")
    stored = _episodes(book_engine)
    assert page["count"] == len(stored) > 0
    keys = [(a["started_at"], a["id"]) for a in page["alerts"]]
    assert keys == sorted(keys, reverse=True)
    html = text(get(ui, "/alerts"))
    assert f'href="/episodes/{page["alerts"][0]["id"]}"' in html


def test_every_filter_returns_exactly_the_matching_episodes(book_engine: Engine, demo_book: Book) -> None:
    ui = make_ui(book_engine, demo_book.rules)
    stored = _episodes(book_engine)
    kinds = {r.id: r.kind for r in demo_book.rules.rules}
    owners = {}
    with book_engine.connect() as conn:
        owners = dict(conn.execute(sa.text("SELECT id, owner_email FROM accounts")).all())
    some = stored[len(stored) // 2]

    def ids(url: str) -> set[int]:
        out: set[int] = set()
        for _ in range(1000):  # bounded: a pager that never ends fails instead of hanging
            if not url:
                break
            page = data(ui, url)
            out |= {a["id"] for a in page["alerts"]}
            url = f"{url.split('&after=')[0]}&after={page['next']}" if page["next"] else ""
        return out

    assert ids(f"/alerts?rule={some['rule_id']}") == {e["id"] for e in stored if e["rule_id"] == some["rule_id"]}
    assert ids("/alerts?kind=drop") == {e["id"] for e in stored if kinds.get(e["rule_id"]) == "drop"}
    assert ids("/alerts?state=firing") == {e["id"] for e in stored if e["status"] == "firing"}
    assert ids("/alerts?state=resolved") == {e["id"] for e in stored if e["status"] == "resolved"}
    assert ids(f"/alerts?account={some['account_id']}") == {e["id"] for e in stored
                                                             if e["account_id"] == some["account_id"]}
    owner = next(owners[e["account_id"]] for e in stored[len(stored) // 2:] if owners.get(e["account_id"]))
    assert ids(f"/alerts?owner={quote(owner.upper())}") == {e["id"] for e in stored if owners.get(e["account_id"]) == owner}
    cut = some["started_at"]
    not_a_date = get(ui, f"/alerts?from={cut}&rule={some['rule_id']}&format=json")  # epoch seconds are no date:
    assert not_a_date.status == 400 and "from: " in json.loads(not_a_date.body)["error"]  # not the unfiltered list
    day = datetime.fromtimestamp(cut, UTC).strftime("%Y-%m-%d")
    assert ids(f"/alerts?from={day}") == {e["id"] for e in stored if e["started_at"] >= (cut // 86400) * 86400}
    assert ids(f"/alerts?to={day}") == {e["id"] for e in stored if e["started_at"] < (cut // 86400) * 86400}
    both = ids(f"/alerts?state=firing&kind=quota&owner={quote(owner)}")
    assert both == {e["id"] for e in stored if e["status"] == "firing" and kinds.get(e["rule_id"]) == "quota"
                    and owners.get(e["account_id"]) == owner}


def test_a_bad_filter_value_is_said_on_the_page_not_a_500(book_engine: Engine, demo_book: Book) -> None:
    ui = make_ui(book_engine, demo_book.rules)
    for q, says in (("from=yesterday", "from: &#39;yesterday&#39; is not a date"), ("state=burning", "state:"),
                    ("after=x.y", "not a page position")):
        resp = get(ui, f"/alerts?{q}")
        assert resp.status == 200, q
        assert says in text(resp), q
        machine = get(ui, f"/alerts?{q}&format=json")  # was a 200 with every alert: the filter dropped
        assert machine.status == 400 and says.split(":")[0] in json.loads(machine.body)["error"], q


def test_pages_are_keyset_pages_without_gaps_or_repeats(book_engine: Engine, demo_book: Book) -> None:
    ui = make_ui(book_engine, demo_book.rules)
    ui.config = type(ui.config)(anonymous=True, page_size=10)
    seen: list[int] = []
    url = "/alerts?"
    pages = 0
    while url:
        page = data(ui, url)
        assert len(page["alerts"]) <= 10
        seen += [a["id"] for a in page["alerts"]]
        url = f"/alerts?after={page['next']}" if page["next"] else ""
        pages += 1
    assert sorted(seen) == [e["id"] for e in _episodes(book_engine)]
    assert len(seen) == len(set(seen)) and pages > 2
    html = text(get(ui, "/alerts"))
    assert re.search(r'href="/alerts\?after=\d+\.\d+" rel="next"', html)


def test_episode_page_says_why_it_fired_and_who_acted(book_engine: Engine, demo_book: Book) -> None:
    stored = _episodes(book_engine)
    ep = next(e for e in stored if e["status"] == "firing" and e["last_explanation"].get("kind") == "drop")
    actions = EpisodeActions(book_engine, clock=lambda: NOW)
    actions.acknowledge(ep["id"], "U0ALICE01 (alice)")
    actions.snooze(ep["id"], "U0BOBBY01 (bob)", 86400)
    ui = make_ui(book_engine, demo_book.rules)
    resp = get(ui, f"/episodes/{ep['id']}")
    html = text(resp)
    assert resp.status == 200
    rule = demo_book.rules.by_id()[ep["rule_id"]]
    fired = data(ui, f"/episodes/{ep['id']}")
    why = fired["why"]
    for needle in (ep["rule_id"], rule.rule_hash, "the rule is unchanged since", "Frozen usual level",
                   "U0ALICE01 (alice)", "U0BOBBY01 (bob)", "acknowledged", "snoozed", "Every transition"):
        assert needle in html, needle
    assert why["value"] is not None and why["baseline"] is not None and why["threshold"] is not None
    events = [e["event"] for e in fired["events"]]
    assert events[:2] == ["pending", "fired"] or "fired" in events
    assert {"acknowledged", "snoozed"} <= set(events)
    assert [e["actor"] for e in fired["events"] if e["event"] == "acknowledged"] == ["U0ALICE01 (alice)"]
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert 'class="zero-axis"' in svg and "usual level (when it fired)" in svg and "marker-fired" in svg


def test_episode_of_a_changed_rule_says_so_and_unknown_episodes_are_404(book_engine: Engine, demo_book: Book) -> None:
    ep = _episodes(book_engine)[0]
    with book_engine.begin() as conn:
        conn.execute(sa.text("UPDATE alert_events SET explanation = json_set(explanation, '$.rule_hash', 'oldhash12345')"
                             " WHERE episode_id = :i"), {"i": ep["id"]})
    ui = make_ui(book_engine, demo_book.rules)
    assert "the rule file changed since" in text(get(ui, f"/episodes/{ep['id']}"))
    for bad in ("/episodes/999999", "/episodes/abc", "/episodes/1" + "0" * 30, "/episodes/", "/nope"):
        assert get(ui, bad).status == 404, bad


def test_account_page_has_a_chart_per_metric_with_levels_quota_and_alerts(book_engine: Engine, demo_book: Book) -> None:
    stored = _episodes(book_engine)
    ep = next(e for e in stored if e["last_explanation"].get("kind") == "drop")
    ui = make_ui(book_engine, demo_book.rules)
    resp = get(ui, f"/accounts/{ep['account_id']}")
    html = text(resp)
    assert resp.status == 200
    charts = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(charts) >= 3
    usage = next(c for c in charts if f"{ep['metric']} per day" in c)
    assert 'class="zero-axis"' in usage and "usual level (" in usage and "threshold (" in usage
    assert "marker-fired" in usage
    assert any("billing period to date" in c and "quota " in c for c in charts)
    assert f'href="/episodes/{ep["id"]}"' in html
    assert get(ui, "/accounts/no-such-account").status == 404


def test_no_page_writes_anything(book_engine: Engine, demo_book: Book) -> None:
    """Views only: every page leaves every table as it was (not even the usage tiles)."""
    from storage.models import CRM_TABLES, SLACK_TABLES, UsageTile, UsageTileSet

    tables = [*TABLES, *SLACK_TABLES, *CRM_TABLES, UsageTile.__table__, UsageTileSet.__table__]

    def snapshot() -> list:
        with book_engine.connect() as conn:
            return [sorted(map(tuple, conn.execute(sa.select(t)).all()), key=repr) for t in tables]

    before = snapshot()
    ui = make_ui(book_engine, demo_book.rules)
    stored = _episodes(book_engine)
    for url in ["/", "/alerts", "/alerts?state=open", "/login", *(f"/episodes/{e['id']}" for e in stored[:15]),
                *(f"/accounts/{e['account_id']}" for e in stored[:5])]:
        assert get(ui, url).status in (200, 302), url
    assert snapshot() == before


def test_html_escapes_what_accounts_and_messages_hold(book_engine: Engine, demo_book: Book) -> None:
    ep = _episodes(book_engine)[0]
    with book_engine.begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET name = '<script>alert(1)</script>' WHERE id = :a"),
                     {"a": ep["account_id"]})
    ui = make_ui(book_engine, demo_book.rules)
    for url in (f"/episodes/{ep['id']}", f"/accounts/{ep['account_id']}", f"/alerts?account={ep['account_id']}"):
        html = text(get(ui, url))
        assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html, url
    resp = get(ui, "/alerts")
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["Cache-Control"] == "no-store"


def test_over_http_a_non_ascii_account_id_and_out_of_range_numbers(book_engine: Engine, demo_book: Book) -> None:
    """Over a real socket: WSGI hands the path over as latin-1 characters, so /accounts/caf%C3%A9
    was looked up as 'cafÃ©' (404) and /episodes/%B2 ('²', which str.isdigit() accepts) was a 500;
    a page position past BIGINT (9999999999999999999) overflowed the driver: a 500."""
    import httpx

    from bot.service.http_server import HttpServer
    from rules.model import AccountFacts
    from storage.accounts import upsert_accounts

    upsert_accounts(book_engine, [AccountFacts(id="café-ü", name="Café Ü GmbH")], now=NOW)
    server = HttpServer("127.0.0.1", 0, make_ui(book_engine, demo_book.rules).routes())
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        page = httpx.get(f"{base}/accounts/{quote('café-ü', safe='')}", timeout=30)
        assert page.status_code == 200 and "Café Ü GmbH" in page.text
        for path in ("/episodes/%B2", "/episodes/%C2%B2", "/episodes/%D9%A3", "/episodes/9223372036854775808",
                     "/accounts/%FF"):
            assert httpx.get(base + path, timeout=30).status_code == 404, path
        for after in ("9999999999999999999.1", "1.9999999999999999999", "-9999999999999999999.1", "%C2%B2.1"):
            html = httpx.get(f"{base}/alerts?after={after}", timeout=30)
            assert html.status_code == 200 and "not a page position" in html.text, after
            assert httpx.get(f"{base}/alerts?format=json&after={after}", timeout=30).status_code == 400, after
    finally:
        server.stop()


def test_the_account_page_says_a_period_elapsed_share_as_the_alerts_do() -> None:
    """Seen: the page rounded the billing period's elapsed share up (int(round(x * 100))), where every
    alert text and /usage round a share down (29.6% elapsed read "30%")."""
    from bot.web.app import _environment

    page = _environment().from_string("{{ x | percent }} elapsed")
    assert [page.render(x=x) for x in (0.296, 0.29, 0.999, 0.0004)] == [
        "29% elapsed", "29% elapsed", "99% elapsed", "&lt;0.1% elapsed"]  # (escaped: the page reads "<0.1%")
    source = (Path(__file__).parents[3] / "bot/web/templates/account.html.j2").read_text()
    assert "period_elapsed | percent }} elapsed" in source
