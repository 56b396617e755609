"""The read-only web UI: alert list, episode page, account page, sign-in (server-rendered HTML).

    ui = WebUI(config, engine, rules=lambda: ruleset)
    routes = ui.routes()          # mounted on bot.service.http_server.HttpServer (by bot.serve.service or `usagebot ui`)

Pages (GET; `?format=json` gives the same data as JSON for machines):
    /alerts                 alert episodes, newest first; filters owner, rule, kind, state, account,
                            from/to (start time); keyset pages (`after`)
    /episodes/<id>          why it fired: inputs, usual level, threshold, rule version, every
                            transition with who acknowledged or snoozed it, its chart, its Slack messages
    /accounts/<id>          each metric's chart (usage, usual level, thresholds, quota, alerts) and alerts
    /login, /login/slack, /auth/slack   Sign in with Slack; POST /logout
Nothing here changes alert state: every page is a read, and the only POST ends a session.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy.engine import Engine

from bot import __version__
from bot.config.web import WebConfig
from bot.service.http_server import Request, Response, Route
from bot.web import auth
from bot.web.queries import (
    COUNT_CAP,
    STATES,
    AlertFilter,
    Cursor,
    alert_page,
    episode_record,
    owner_accounts,
)
from integrations.console import format_number
from rules.detectors import format as fmt
from rules.durations import format_duration
from rules.kinds import KINDS
from rules.model import RuleSet
from storage.db import bigint_of

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
ACCOUNT_DAYS = 90
KIND_TITLES = {"spike": "Usage spike", "drop": "Usage drop", "inactivity": "Inactive account", "quota": "Quota",
               "expansion": "Expansion opportunity"}


def when(ts: Any) -> str:
    if ts is None or ts == "":
        return "—"
    try:
        return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def num(x: Any) -> str:
    if x is None:
        return "—"
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    return format_number(f) if math.isfinite(f) else str(f)


def detail(v: Any) -> str:
    if isinstance(v, float):
        return num(v)
    if isinstance(v, list | dict):
        return json.dumps(v)
    return "—" if v is None else str(v)


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("bot", "web/templates"), autoescape=select_autoescape(["j2", "html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update({"when": when, "num": num, "detail": detail, "percent": fmt.percent,
                        "duration": lambda s: format_duration(int(s or 0)) if s else "none"})
    env.globals.update({"account_url": lambda a: "/accounts/" + quote(str(a), safe=""), "version": __version__,
                        "cap": COUNT_CAP})
    return env


def parse_day(text: str, field: str) -> int:
    """A date (2026-11-01) or date-time (UTC unless it says otherwise) as epoch seconds."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{field}: {text[:40]!r} is not a date like 2026-11-01 (or 2026-11-01T12:00)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


@dataclass
class Page:
    """A rendered answer: HTML from a template, or the same data as JSON."""

    template: str
    context: dict[str, Any]
    data: Any = None
    status: int = 200
    refused: str = ""  # a bad query value: the page says it and shows the rest; JSON is a 400 with it


class WebUI:
    def __init__(self, config: WebConfig, engine: Engine, rules: Callable[[], RuleSet],
                 clock: Callable[[], int] = lambda: int(time.time()), slack: Any = None,
                 access: Any = None, sign_in: auth.SlackSignIn | None = None) -> None:
        """slack: the [slack] config (access rules of `/usage`); access: an AccessPolicy (built from it
        when None); sign_in: Sign in with Slack (built from config when it has a client id)."""
        from integrations.slack.config import SlackConfig

        self.config = config
        self.engine = engine
        self.rules = rules
        self.clock = clock
        self.slack: SlackConfig = slack if slack is not None else SlackConfig()
        self.access = access if access is not None else _access_policy(self.slack, engine, clock)
        self.sessions = auth.Sessions(config, clock)
        self.sign_in = sign_in if sign_in is not None else (
            auth.SlackSignIn(config, self.slack.base_url, self._team_id, timeout=self.slack.timeout)
            if config.slack_sign_in else None)
        self._team: str | None = config.slack_team_id
        self.env = _environment()

    # ------------------------------------------------------------------ routing

    def routes(self) -> list[Route]:
        """GET every page (one prefix route under the service's own paths), POST /logout."""
        return [Route("GET", "/", self.handle, "web", prefix=True),
                Route("POST", "/logout", self.logout, "web")]

    def handle(self, req: Request) -> Response:
        path = req.path
        try:
            if path in ("/login", "/login/slack", "/auth/slack"):
                return self._sign_in_route(req)
            who = self.authenticate(req)
            if isinstance(who, Response):
                return who
            if path == "/":
                return Response(302, b"", {"Location": "/alerts"})
            if path == "/alerts":
                return self._answer(req, self.alerts(req, who), who)
            if path.startswith("/episodes/"):
                return self._answer(req, self.episode(path.removeprefix("/episodes/"), who), who)
            if path.startswith("/accounts/"):
                return self._answer(req, self.account(path.removeprefix("/accounts/"), who), who)
            return self._answer(req, self._not_found("No such page."), who)
        except Exception:
            log.exception("web UI: GET %s failed", path)
            return self._html(self._render("message.html.j2", {"heading": "Something went wrong", "error": True,
                                                               "text": "It was logged; please try again.",
                                                               "principal": None}), 500)

    def _answer(self, req: Request, page: Page, who: auth.Principal) -> Response:
        if _wants_json(req):
            data = page.data if page.data is not None else {"error": page.context.get("text", "")}
            status = page.status
            if page.refused:  # a machine must not take the unfiltered list for the filtered one
                data, status = {"error": page.refused}, 400
            resp = Response(status, (json.dumps(data, default=str) + "\n").encode(),
                            {"Content-Type": "application/json"})
            resp.headers.update({"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
            return resp
        ctx = {"principal": who, "now": self.clock(), **page.context}
        return self._html(self._render(page.template, ctx), page.status)

    def _render(self, template: str, ctx: Mapping[str, Any]) -> str:
        return self.env.get_template(template).render(**ctx)

    def _html(self, body: str, status: int = 200, extra: Mapping[str, str] | None = None) -> Response:
        headers = {"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS, **(extra or {})}
        return Response(status, body.encode(), headers)

    def _not_found(self, text: str) -> Page:
        return Page("message.html.j2", {"heading": "Not found", "text": text, "error": True},
                    {"error": text}, status=404)

    # ------------------------------------------------------------------ access

    def _team_id(self) -> str | None:
        """The workspace people sign in with: [web] slack_team_id, else the bot token's (auth.test, once)."""
        if self._team is None and self.slack.enabled:
            from integrations.slack.api import SlackApi

            try:
                self._team = str(SlackApi.from_config(self.slack).auth_test().get("team_id") or "") or None
            except Exception as exc:
                log.warning("web UI: auth.test for the Slack workspace failed: %s", exc)
        return self._team

    def authenticate(self, req: Request) -> auth.Principal | Response:
        """The principal of a request, or the answer that asks it to sign in (or refuses it)."""
        bearer = auth.bearer_ok(self.config, req.headers)
        if bearer:
            return auth.Principal("token")
        if bearer is False:
            return self._unauthorized(req, "wrong token")
        claims = self.sessions.session(req.headers)
        if claims is not None:
            uid = str(claims.get("sub") or "")
            if not self._allowed(uid):
                return self._not_allowed()
            email = str(claims.get("email") or "")
            return auth.Principal("slack", uid, email, str(claims.get("name") or ""),
                                  owner_email=email if self.slack.owner_only else None)
        if self.config.anonymous:
            return auth.Principal("anonymous")
        return self._unauthorized(req, "sign in")

    def _allowed(self, user_id: str) -> bool:
        """The /usage allow-list; a failing user group lookup refuses (and is logged), never a 500."""
        try:
            return bool(self.access.allowed(user_id))
        except Exception as exc:
            log.warning("web UI: checking whether %s is allowed failed: %s", user_id, exc)
            return False

    def _not_allowed(self, extra: Mapping[str, str] | None = None) -> Response:
        return self._html(self._render("message.html.j2", {
            "heading": "Not allowed", "error": True, "principal": None,
            "text": "You are not on usagebot's list of allowed users ([slack] allowed_users / "
                    "allowed_usergroups). Ask your usagebot admin."}), 403, extra)

    def _unauthorized(self, req: Request, why: str) -> Response:
        if _wants_html(req) and why == "sign in":
            return Response(302, b"", {"Location": auth.login_path(_full_path(req)), "Cache-Control": "no-store"})
        resp = Response.json(401, {"error": "missing or wrong token: send 'Authorization: Bearer <token>'"
                                   if why == "wrong token" else "sign in, or send 'Authorization: Bearer <token>'"})
        resp.headers["WWW-Authenticate"] = 'Bearer realm="usagebot"'
        return resp

    def _visible(self, who: auth.Principal) -> frozenset[str] | None:
        return None if who.owner_email is None else owner_accounts(self.engine, who.owner_email)

    # ------------------------------------------------------------------ sign-in

    def _sign_in_route(self, req: Request) -> Response:
        q = {k: v[-1] for k, v in req.query.items()}
        if req.path == "/login":
            # no "problem" from the query: a link could show any words as our error (sign-in problems are
            # rendered by the callback itself)
            ctx = {"principal": None, "slack": self.sign_in is not None, "next": auth.safe_next(q.get("next")),
                   "problem": ""}
            return self._html(self._render("login.html.j2", ctx), 200)
        if self.sign_in is None:
            return self._html(self._render("message.html.j2", {
                "heading": "Not found", "text": "Sign in with Slack is not set up here.", "error": True,
                "principal": None}), 404)
        if req.path == "/login/slack":
            url, cookie = self.sign_in.start(self.sessions, q.get("next", "/"))
            return Response(302, b"", {"Location": url, "Set-Cookie": cookie, "Cache-Control": "no-store"})
        try:
            who, target = self.sign_in.finish(self.sessions, req.headers, q)
        except auth.SignInError as exc:
            return self._html(self._render("login.html.j2", {"principal": None, "slack": True, "next": "/",
                                                             "problem": str(exc)}), 400,
                              {"Set-Cookie": self.sessions.clear(auth.LOGIN_COOKIE)})
        if not self._allowed(who.user_id):
            log.info("web UI: %s signed in with Slack but is not allowed", who.user_id)
            return self._not_allowed({"Set-Cookie": self.sessions.clear(auth.LOGIN_COOKIE)})
        log.info("web UI: %s signed in with Slack", who.user_id, extra={"event": "web_sign_in"})
        resp = Response(303, b"", {"Location": target, "Cache-Control": "no-store"})
        resp.headers["Set-Cookie"] = self.sessions.session_cookie(who)
        return resp

    def logout(self, req: Request) -> Response:
        return Response(303, b"", {"Location": "/login", "Set-Cookie": self.sessions.clear(auth.SESSION_COOKIE),
                                   "Cache-Control": "no-store"})

    # ------------------------------------------------------------------ pages

    def alerts(self, req: Request, who: auth.Principal) -> Page:
        raw = {k: v[-1].strip() for k, v in req.query.items() if v}
        problems: list[str] = []

        def parsed(key: str, parse: Callable[[str], Any]) -> Any:
            try:
                return parse(raw[key]) if raw.get(key) else None
            except ValueError as exc:  # said on the page; the other filters still apply
                problems.append(str(exc))
                return None

        since = parsed("from", lambda t: parse_day(t, "from"))
        until = parsed("to", lambda t: parse_day(t, "to"))
        after = parsed("after", Cursor.decode)
        state = raw.get("state", "")
        if state and state not in STATES:
            problems.append(f"state: {state[:20]!r} is not one of {', '.join(STATES)}")
            state = ""
        ruleset = self.rules()
        kinds = {r.id: r.kind for r in ruleset.rules}
        f = AlertFilter(owner=raw.get("owner", "")[:200], rule=raw.get("rule", "")[:200],
                        kind=raw.get("kind", "")[:40], state=state, account=raw.get("account", "")[:200],
                        since=since, until=until, accounts=self._visible(who))
        page = alert_page(self.engine, f, kinds, self.clock(), self.config.page_size, after)
        keep = {k: v for k, v in raw.items() if k in ("owner", "rule", "kind", "state", "account", "from", "to") and v}
        next_url = f"/alerts?{urlencode({**keep, 'after': page.next.encode()})}" if page.next else None
        data = {"count": page.count, "count_capped": page.count > COUNT_CAP,
                "next": page.next.encode() if page.next else None,
                "alerts": [_alert_json(r, page.accounts.get(r["account_id"])) for r in page.rows]}
        return Page("alerts.html.j2", {
            "nav": "open" if state == "open" and len(keep) == 1 else "alerts", "page": page, "f": f, "raw": raw,
            "problem": "; ".join(problems), "rule_ids": sorted({*kinds, *([f.rule] if f.rule else [])}),
            "kinds": sorted({*KINDS, *kinds.values()}), "states": STATES, "after": after,
            "next_url": next_url, "first_url": f"/alerts?{urlencode(keep)}" if keep else "/alerts"}, data,
            refused="; ".join(problems))

    def episode(self, ident: str, who: auth.Principal) -> Page:
        from integrations.charts.data import chart_of_episode
        from integrations.charts.svg import render_svg

        eid = bigint_of(ident, 1)
        if eid is None:
            return self._not_found("No such alert episode.")
        rec = episode_record(self.engine, eid)
        visible = self._visible(who)
        if rec is None or (visible is not None and rec.episode["account_id"] not in visible):
            return self._not_found("No such alert episode (or not one of your accounts).")
        e = rec.episode
        rule = self.rules().by_id().get(e["rule_id"])
        fired = next((ev for ev in rec.events if ev["event"] == "fired"), None)
        fired_expl = dict(fired["explanation"]) if fired else dict(e["last_explanation"] or {})
        chart = chart_of_episode(self.engine, int(e["id"]), self.clock())
        kind = str(fired_expl.get("kind") or (rule.kind if rule else ""))
        data = {"episode": _episode_json(e), "why": fired_expl, "events": rec.events, "slack_messages": rec.messages,
                "account": rec.account, "rule": _rule_json(rule) if rule else None,
                "other_episodes": rec.others}
        return Page("episode.html.j2", {
            "rec": rec, "rule": rule, "fired_expl": fired_expl, "kind_title": KIND_TITLES.get(kind, kind.title() or "Alert"),
            "chart": Markup(render_svg(chart)) if chart is not None else None,
            "rule_params": _params_text(rule) if rule else ""}, data)

    def account(self, ident: str, who: auth.Principal) -> Page:
        from bot.web.account_view import account_view

        visible = self._visible(who)
        if not ident or (visible is not None and ident not in visible):
            return self._not_found("No such account (or not one of yours).")
        view = account_view(self.engine, ident, self.rules(), self.clock(), ACCOUNT_DAYS)
        if view is None:
            return self._not_found("No such account.")
        data = {"account": asdict(view.account), "episodes": [_episode_json(r) for r in view.episodes],
                "metrics": view.metrics}
        return Page("account.html.j2", {"account": view.account, "summary": view.summary, "days": ACCOUNT_DAYS,
                                        "charts": [Markup(c) for c in view.charts], "episodes": view.episodes}, data)


# ---------------------------------------------------------------------- helpers


def _access_policy(slack: Any, engine: Engine, clock: Callable[[], int]) -> Any:
    """The `/usage` AccessPolicy for this [slack] config (its user directory only when there is a bot token)."""
    from integrations.slack.usage_answers import AccessPolicy

    directory = None
    if slack.enabled and slack.restricted:
        from integrations.slack.api import SlackApi
        from integrations.slack.lookups import SlackDirectory

        directory = SlackDirectory(SlackApi.from_config(slack), engine, slack, clock)
    return AccessPolicy(slack, directory)  # type: ignore[arg-type]


def _wants_json(req: Request) -> bool:
    fmt = (req.query.get("format") or [""])[-1]
    if fmt:
        return fmt == "json"
    accept = req.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _wants_html(req: Request) -> bool:
    return "text/html" in req.headers.get("accept", "") and not _wants_json(req)


def _full_path(req: Request) -> str:
    q = urlencode({k: v[-1] for k, v in req.query.items()})
    return req.path + (f"?{q}" if q else "")


def _episode_json(r: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k not in ("key",)}


def _alert_json(r: Mapping[str, Any], account: Mapping[str, Any] | None) -> dict[str, Any]:
    expl = r.get("last_explanation") or {}
    return {"id": r["id"], "rule": r["rule_id"], "kind": expl.get("kind"), "account": r["account_id"],
            "account_name": (account or {}).get("name"), "owner_email": (account or {}).get("owner_email"),
            "metric": r["metric"], "discriminator": r["discriminator"], "status": r["status"],
            "severity": r["severity"], "started_at": r["started_at"], "fired_at": r["fired_at"],
            "resolved_at": r["resolved_at"], "acknowledged_by": r["acknowledged_by"],
            "snoozed_until": r["snoozed_until"], "message": expl.get("message", "")}


def _rule_json(rule: Any) -> dict[str, Any]:
    return {"id": rule.id, "kind": rule.kind, "metric": rule.metric, "bucket": rule.bucket,
            "rule_hash": rule.rule_hash, "description": rule.description, "source_file": rule.source_file,
            "source_line": rule.source_line, "params": asdict(rule.params)}


def _params_text(rule: Any) -> str:
    p = {k: v for k, v in asdict(rule.params).items() if v is not None}
    parts = [f"{k} = {v}" for k, v in p.items()]
    if rule.kind in ("spike", "drop"):
        b = rule.baseline
        parts.append(f"baseline {format_duration(b.window)} {b.seasonality} {b.method} (min {b.min_points} points)")
        g = rule.guards
        parts.append(f"guards min_baseline {g.min_baseline:g}, min_delta {g.min_delta:g}, min_value {g.min_value:g}")
    return " · ".join(parts)
