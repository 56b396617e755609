"""The Slack app (slack-bolt): alert buttons, the `/usage` command, and how it is run.

    notifier = slack_notifier(config, engine)          # for bot.pipeline.deliver_outbox
    app = build_slack_app(config, engine)               # buttons + /usage
    handler = run_socket_mode(app, config, block=False) # Socket Mode (app token, no public URL), or
    wsgi = http_handler(app, config)                    # HTTP mode: mount, or serve_http(app, config, port)

Every handler acks at once (Slack wants an answer within 3 s); the work runs after the ack and the
answer goes to the request's response_url (ephemeral). In HTTP mode bolt verifies each request's
signature and timestamp with the signing secret and rejects forged or stale ones (401).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from slack_bolt import App
from sqlalchemy.engine import Engine

from bot.http_server import Response
from bot.pipeline import Notifier
from integrations.console import ConsoleNotifier
from integrations.slack.actions import EpisodeActions
from integrations.slack.api import make_web_client
from integrations.slack.config import SlackConfig
from integrations.slack.notifier import SlackNotifier, actor_label
from integrations.slack.render import (
    ACK_ACTION,
    CRM_ACTION,
    DASHBOARD_ACTION,
    NOT_USEFUL_ACTION,
    SNOOZE_ACTION,
    SlackMessageContent,
)
from integrations.slack.usage_command import UsageCommandHandler, text_message
from rules.durations import DurationError, parse_duration
from rules.health import DEFAULT_MODEL, HealthModel

log = logging.getLogger(__name__)

Clock = Callable[[], int]


def _now() -> int:
    return int(time.time())


def slack_notifier(config: SlackConfig, engine: Engine, clock: Clock = _now) -> Notifier:
    """The Slack notifier when a bot token is configured, else the console notifier."""
    if not config.enabled:
        return ConsoleNotifier(template_dir=config.template_dir)
    return SlackNotifier(config, engine, clock=clock)


def _ephemeral(respond: Any, content: SlackMessageContent) -> None:
    respond(response_type="ephemeral", replace_original=False, text=content.text, blocks=content.blocks)


def _actor(body: Mapping[str, Any]) -> tuple[str, str]:
    user = body.get("user") or {}
    uid = str(user.get("id") or body.get("user_id") or "")
    name = user.get("username") or user.get("name") or body.get("user_name")
    return uid, actor_label(uid, str(name) if name else None)


def _action_value(body: Mapping[str, Any]) -> str:
    action = (body.get("actions") or [{}])[0]
    if action.get("selected_option"):
        return str(action["selected_option"].get("value", ""))
    return str(action.get("value", ""))


SORRY = text_message("Sorry, something went wrong; it was logged. Please try again in a minute.")


def build_slack_app(config: SlackConfig, engine: Engine, clock: Clock = _now,
                    notifier: SlackNotifier | None = None, health_model: HealthModel = DEFAULT_MODEL) -> App:
    """A bolt App with the alert buttons and the slash command registered (health_model: the
    [health] weights for `/usage`, see bot.health_config)."""
    if not config.enabled:
        raise ValueError("build_slack_app: [slack] bot_token is not set (without it alerts go to the console "
                         "and there is no Slack app to run)")
    socket = config.interactive_mode == "socket"
    if not socket and config.signing_secret is None:
        raise ValueError("build_slack_app: HTTP mode needs [slack] signing_secret (or set app_token for "
                         "Socket Mode)")
    app = App(
        client=make_web_client(config),
        signing_secret="" if socket else config.signing_secret.reveal(),  # type: ignore[union-attr]
        request_verification_enabled=not socket,
        token_verification_enabled=False,  # checked on the first request; `usagebot slack check` tests it
        process_before_response=False,
        logger=logging.getLogger("usagebot.slack_app"),
    )
    notifier = notifier or SlackNotifier(config, engine, clock=clock, interactive=True)
    actions = EpisodeActions(engine, clock)
    usage = UsageCommandHandler(config, engine, notifier.directory, notifier.renderer, actions, clock,
                                refresh=notifier.refresh_episode, health_model=health_model)
    access = usage.access

    @app.command(config.command)
    def on_usage(ack: Any, body: dict[str, Any], respond: Any) -> None:
        text = str(body.get("text") or "")
        quick = usage.quick_reply(usage.parse(text))
        if quick is not None:
            ack(response_type="ephemeral", text=quick.text, blocks=quick.blocks)
            return
        ack()
        uid, actor = _actor(body)
        try:
            reply = usage.handle(uid, text, actor)
        except Exception:
            log.exception("%s %r from %s failed", config.command, text, uid)
            reply = SORRY
        _ephemeral(respond, reply)

    def episode_action(body: dict[str, Any], respond: Any,
                       act: Callable[[int, str, str, str], tuple[bool, str]]) -> None:
        uid, actor = _actor(body)
        if not access.allowed(uid):
            _ephemeral(respond, access.denied_message())
            return
        raw = _action_value(body)
        eid_text, _, arg = raw.partition(":")
        try:
            eid = int(eid_text)
        except ValueError:
            log.warning("alert button with a bad value %r from %s", raw, uid)
            _ephemeral(respond, text_message("This button is from an old or altered message; it cannot be used."))
            return
        try:
            changed, message = act(eid, uid, actor, arg)
            if changed:
                notifier.refresh_episode(eid)
        except Exception:
            log.exception("alert action on episode %s by %s failed", eid, uid)
            _ephemeral(respond, SORRY)
            return
        _ephemeral(respond, text_message(message))

    @app.action(ACK_ACTION)
    def on_ack(ack: Any, body: dict[str, Any], respond: Any) -> None:
        ack()

        def act(eid: int, uid: str, actor: str, arg: str) -> tuple[bool, str]:
            r = actions.acknowledge(eid, actor)
            return r.changed, r.message

        episode_action(body, respond, act)

    @app.action(SNOOZE_ACTION)
    def on_snooze(ack: Any, body: dict[str, Any], respond: Any) -> None:
        ack()

        def act(eid: int, uid: str, actor: str, arg: str) -> tuple[bool, str]:
            try:
                seconds = parse_duration(arg)
            except DurationError:
                return False, f"Unknown snooze duration {arg!r}."
            if seconds <= 0:
                return False, f"Unknown snooze duration {arg!r}."
            r = actions.snooze(eid, actor, seconds)
            return r.changed, r.message

        episode_action(body, respond, act)

    @app.action(NOT_USEFUL_ACTION)
    def on_not_useful(ack: Any, body: dict[str, Any], respond: Any) -> None:
        ack()

        def act(eid: int, uid: str, actor: str, arg: str) -> tuple[bool, str]:
            r = actions.not_useful(eid, uid, actor)
            return r.changed, r.message

        episode_action(body, respond, act)

    def on_link(which: str) -> Callable[..., None]:
        def handler(ack: Any, body: dict[str, Any]) -> None:
            ack()  # the browser opens the URL; just record who followed it
            uid, actor = _actor(body)
            raw = _action_value(body)
            if raw.isdigit():
                try:
                    actions.opened_link(int(raw), actor, which)
                except Exception:
                    log.exception("recording a %s link click on episode %s failed", which, raw)
        return handler

    app.action(CRM_ACTION)(on_link("crm"))
    app.action(DASHBOARD_ACTION)(on_link("dashboard"))
    return app


# ------------------------------------------------------------------------- runners


def run_socket_mode(app: App, config: SlackConfig, block: bool = True) -> Any:
    """Connect over Socket Mode (no public URL; needs [slack] app_token). block=False returns the
    connected handler (call .close() to stop)."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    if config.app_token is None:
        raise ValueError("Socket Mode needs [slack] app_token (an app-level token 'xapp-...' with "
                         "connections:write: Basic Information > App-Level Tokens)")
    handler = SocketModeHandler(app, app_token=config.app_token.reveal(), web_client=app.client)
    if block:
        handler.start()
    else:
        handler.connect()
    return handler


def http_handler(app: App, config: SlackConfig | None = None) -> Any:
    """A WSGI application answering Slack's requests on config.http_path (404 elsewhere)."""
    from slack_bolt.adapter.wsgi import SlackRequestHandler

    return SlackRequestHandler(app, path=config.http_path if config is not None else "/slack/events")


def dispatch_http(app: App, body: bytes | str, headers: Mapping[str, str],
                  query: str = "") -> tuple[int, dict[str, str], str]:
    """Handle one Slack HTTP request from any server: (status, headers, body) to send back.

    The signature and timestamp are verified by the app (401 when forged or stale)."""
    from slack_bolt.request import BoltRequest

    raw = body.decode("utf-8") if isinstance(body, bytes) else body
    resp = app.dispatch(BoltRequest(body=raw, query=query, headers={k.lower(): [v] for k, v in headers.items()}))
    return resp.status, {k: v[0] if isinstance(v, list) else v for k, v in resp.headers.items()}, resp.body


SLACK_MAX_AGE = 300  # seconds; slack-bolt refuses older request timestamps too (replay window)


def slack_signature_headers(headers: Mapping[str, str]) -> Response | None:
    """Slack HTTP mode, before the body is read: the signature headers are there and the timestamp is fresh.

    The signature itself (an HMAC of the body) is verified by slack-bolt once the body is in.
    """
    ts, sig = headers.get("x-slack-request-timestamp", ""), headers.get("x-slack-signature", "")
    if not ts or not sig:
        return Response.json(401, {"error": "missing X-Slack-Request-Timestamp / X-Slack-Signature headers"})
    if not ts.isdigit() or abs(time.time() - int(ts)) > SLACK_MAX_AGE:
        return Response.json(401, {"error": "stale or malformed X-Slack-Request-Timestamp"})
    if not sig.startswith("v0=") or len(sig) > 200:
        return Response.json(401, {"error": "malformed X-Slack-Signature"})
    return None


class HttpModeServer:
    """Slack HTTP mode on its own port (bot.http_server: the service's hardened server)."""

    def __init__(self, server: Any) -> None:
        self._server = server

    @property
    def server_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self._server.port)

    def serve_forever(self) -> None:
        self._server.start()
        threading.Event().wait()

    def shutdown(self) -> None:
        self._server.stop()

    def server_close(self) -> None:
        return None


def serve_http(app: App, config: SlackConfig, host: str = "0.0.0.0", port: int = 3000,
               block: bool = True) -> HttpModeServer:
    """Serve HTTP mode on host:port (put TLS in front: Slack only calls https URLs). block=False runs
    it in the background and returns the server (server.server_address has the port; .shutdown() stops).
    Signature headers are checked before the body is read; bolt verifies the signature itself."""
    from bot.http_server import HttpServer, Route, wsgi_route

    route = Route("POST", config.http_path, wsgi_route(http_handler(app, config)), "slack",
                  max_body=2_000_000, authorize=slack_signature_headers)
    server = HttpModeServer(HttpServer(host, port, [route]))
    if block:
        server.serve_forever()
    else:
        server._server.start()
    return server
