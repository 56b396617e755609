"""The Slack app (slack-bolt): alert buttons, the `/usage` command, and how it is run.

    notifier = slack_notifier(config, engine)          # for bot.service.pipeline.deliver_outbox
    app = build_slack_app(config, engine)               # buttons + /usage
    handler = run_socket_mode(app, config, block=False) # Socket Mode (app token, no public URL), or
    wsgi = http_handler(app, config)                    # HTTP mode: mount, or serve_http(app, config, port)

Every handler acks at once (Slack wants an answer within 3 s); the work runs after the ack and the
answer goes to the request's response_url (ephemeral). In HTTP mode bolt verifies each request's
signature and timestamp with the signing secret and rejects forged or stale ones (401).

Hostile requests:
- every button (acknowledge, snooze, not useful, log task, assign to CSM, the CRM and dashboard
  links) goes through one
  `on_action` wrapper: the allow-list first, then the action; a value that is no episode id of this
  database (text, a 5,000-digit number) gets a clear ephemeral answer;
- a valid signed request replayed (within the 5 minutes its signature stays valid) is answered 200
  and not executed again: its signature is recorded in the database (storage.slack.first_time_seen),
  so replicas share what was seen; in Socket Mode a payload Slack delivers again (a late
  acknowledgement, a reconnect) is recognised by its trigger_id / event_id and not run again;
- a body bolt cannot parse (malformed JSON or form data, not UTF-8, nested too deeply) is 401 when
  its signature is wrong and 400 when it is right, never a 500; anything a listener or middleware
  raises goes to bolt's one error handler (`@app.error`), which logs one line and answers 400.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.request import payload_utils
from slack_sdk.signature import SignatureVerifier
from sqlalchemy.engine import Engine

from bot.service.http_server import Response
from bot.service.pipeline import Notifier, deliver_rows
from integrations.console import ConsoleNotifier
from integrations.slack.actions import EpisodeActions
from integrations.slack.api import DeadlineWebhookClient, make_web_client
from integrations.slack.assign import SlackAssignments, assign_key
from integrations.slack.blocks import escape_mrkdwn
from integrations.slack.config import SlackConfig
from integrations.slack.notifier import SlackNotifier, actor_label
from integrations.slack.render import (
    ACK_ACTION,
    ASSIGN_ACTION,
    CRM_ACTION,
    DASHBOARD_ACTION,
    LOG_TASK_ACTION,
    NOT_USEFUL_ACTION,
    SNOOZE_ACTION,
    SlackMessageContent,
)
from integrations.slack.updates import SlackUpdates, update_item
from integrations.slack.usage_answers import UsageCommandHandler, text_message
from integrations.slack.usage_args import MAX_SNOOZE
from integrations.sources.records import shown
from rules.durations import DurationError, parse_duration
from rules.health import DEFAULT_MODEL, HealthModel
from storage.db import bigint_of
from storage.outbox import enqueue
from storage.slack import first_time_seen

if TYPE_CHECKING:
    from bot.crm.task_button import TaskButton

log = logging.getLogger(__name__)

Clock = Callable[[], int]


def _now() -> int:
    return int(time.time())


def slack_notifier(config: SlackConfig, engine: Engine, clock: Clock = _now) -> Notifier:
    """The Slack notifier when a bot token is configured, else the console notifier."""
    if not config.enabled:
        return ConsoleNotifier(template_dir=config.template_dir)
    return SlackNotifier(config, engine, clock=clock)


def episode_updater(engine: Engine, notifier: SlackNotifier, clock: Clock = _now) -> Callable[[int], None]:
    """`update(episode_id)`: the episode's parent messages show its new state, through the outbox
    (integrations.slack.updates): the row is queued and delivered at once; when Slack fails it
    stays queued and the service's deliver job retries it."""
    outlet = SlackUpdates(notifier)

    def update(episode_id: int) -> None:
        now = clock()
        item = update_item(episode_id, now)
        enqueue(engine, [item], now)
        report = deliver_rows(engine, outlet, now, keys=[item.idempotency_key])
        if report.failed:
            log.warning("the Slack messages of episode %s are not updated yet (retried by the deliver job): %s",
                        episode_id, "; ".join(report.errors))

    return update


def _ephemeral(respond: Any, content: SlackMessageContent, timeout: float) -> None:
    """Answer through the request's response_url (bolt's `respond` holds it, and bolt's proxy and TLS
    context), the post ending within `timeout` as a whole (DeadlineWebhookClient): bolt's own
    `respond` bounds each socket read only, by 30 s, so a response_url dripping its answer held a
    worker thread."""
    try:
        if not getattr(respond, "response_url", None):
            raise ValueError("respond is unsupported here as there is no response_url")
        client = DeadlineWebhookClient(url=respond.response_url, timeout=timeout, proxy=respond.proxy, ssl=respond.ssl)
        body: dict[str, Any] = {"response_type": "ephemeral", "replace_original": False, "text": content.text}
        if content.blocks:  # as bolt's respond: an empty list is left out (Slack may refuse `"blocks": []`)
            body["blocks"] = content.blocks
        sent = client.send_dict(body)
        if not 200 <= sent.status_code < 300:
            log.warning("Slack refused the answer to a request through its response_url: HTTP %s %s",
                        sent.status_code, shown(sent.body or "", 200))
    except Exception as exc:  # no or a bad response_url in the payload: nobody to answer
        log.warning("could not answer a Slack request through its response_url: %s: %s", type(exc).__name__,
                    shown(str(exc), 200))


def _actor(body: Mapping[str, Any]) -> tuple[str, str]:
    user = body.get("user")
    user = user if isinstance(user, Mapping) else {}
    uid = str(user.get("id") or body.get("user_id") or "")[:64]
    name = user.get("username") or user.get("name") or body.get("user_name")
    return uid, actor_label(uid, str(name)[:80] if name else None)


def _action_value(body: Mapping[str, Any]) -> str | None:
    """The value of the clicked button or chosen option; None when the payload has none (or is malformed)."""
    actions = body.get("actions")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], Mapping):
        return None
    action = actions[0]
    option = action.get("selected_option")
    value = option.get("value") if isinstance(option, Mapping) else action.get("value")
    return value if isinstance(value, str) else None


def episode_id_of(text: str) -> int | None:
    """The episode id a button carries ("123"), or None when it is not one (text, 0, -1, 5,000 digits)."""
    return bigint_of(text, 1)


SORRY = text_message("Sorry, something went wrong; it was logged. Please try again in a minute.")
ALTERED = text_message("This button is from an old or altered message; it cannot be used.")


def build_slack_app(config: SlackConfig, engine: Engine, clock: Clock = _now,
                    notifier: SlackNotifier | None = None, health_model: HealthModel = DEFAULT_MODEL,
                    tasks: TaskButton | None = None) -> App:
    """A bolt App with the alert buttons and the slash command registered (health_model: the
    [health] weights for `/usage`, see bot.config.health; tasks: the "Log task" button's Salesforce
    side, None without [salesforce])."""
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
        logger=logging.getLogger("usagebot.slack.app"),
    )
    notifier = notifier or SlackNotifier(config, engine, clock=clock, interactive=True)
    actions = EpisodeActions(engine, clock)
    update = episode_updater(engine, notifier, clock)
    usage = UsageCommandHandler(config, engine, notifier.directory, notifier.renderer, actions, clock,
                                refresh=update, health_model=health_model)
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
        _ephemeral(respond, reply, config.timeout)

    def on_action(action_id: str, act: Callable[[int, str, str, str], tuple[bool, str] | None],
                  link: bool = False) -> None:
        """Register a button: ack, the allow-list, a valid episode id, then `act(episode, uid, actor,
        arg)` -> (changed, message) or None for no answer. Every button goes through here. A link
        button (the browser has opened its URL) may carry no episode: then there is nothing to do."""

        @app.action(action_id)
        def handler(ack: Any, body: dict[str, Any], respond: Any) -> None:
            ack()
            uid, actor = _actor(body)
            if not access.allowed(uid):
                _ephemeral(respond, access.denied_message(), config.timeout)
                return
            raw = _action_value(body)
            eid_text, _, arg = (raw or "").partition(":")
            eid = episode_id_of(eid_text)
            if eid is None:
                if raw or not link:
                    log.warning("%s button with a bad value %s from %s", action_id, shown(raw), uid)
                if not link:
                    _ephemeral(respond, ALTERED, config.timeout)
                return
            try:
                done = act(eid, uid, actor, arg)
                if done is not None and done[0]:
                    update(eid)
            except Exception:
                log.exception("alert action %s on episode %s by %s failed", action_id, eid, uid)
                _ephemeral(respond, SORRY, config.timeout)
                return
            if done is not None:
                _ephemeral(respond, text_message(done[1]), config.timeout)

    def acknowledge(eid: int, uid: str, actor: str, arg: str) -> tuple[bool, str]:
        r = actions.acknowledge(eid, actor)
        return r.changed, r.message

    def snooze(eid: int, uid: str, actor: str, arg: str) -> tuple[bool, str]:
        try:
            seconds = parse_duration(arg)
        except DurationError:
            seconds = 0
        if not 0 < seconds <= MAX_SNOOZE:
            return False, f"Unknown snooze duration `{escape_mrkdwn(shown(arg, 40))}`."
        r = actions.snooze(eid, actor, seconds)
        return r.changed, r.message

    def not_useful(eid: int, uid: str, actor: str, arg: str) -> tuple[bool, str]:
        r = actions.not_useful(eid, uid, actor)
        return r.changed, r.message

    def log_task(eid: int, uid: str, actor: str, arg: str) -> tuple[bool, str]:
        if tasks is None:
            return False, "Salesforce is not configured ([salesforce] in the config file): no Task can be logged."
        r = tasks.click(eid, actor)
        return r.changed, r.message

    assignments = SlackAssignments(notifier)

    def assign(eid: int, uid: str, actor: str, arg: str) -> tuple[bool, str]:
        r = actions.assign_csm(eid, actor)
        if r.changed:  # the CSM's DM, through the outbox: delivered now, else by the deliver job
            report = deliver_rows(engine, assignments, clock(), keys=[assign_key(eid)])
            if report.failed:
                log.warning("the CSM's DM of episode %s is not sent: %s", eid, "; ".join(report.errors))
                later = "it is retried automatically" if not report.dead else "an admin must look at the outbox"
                return True, f"Assigned, but the CSM's DM is not sent yet ({later})."
        return r.changed, r.message

    def opened(which: str) -> Callable[[int, str, str, str], None]:
        def record(eid: int, uid: str, actor: str, arg: str) -> None:
            actions.opened_link(eid, actor, which)  # the browser opens the URL; just record who followed it
        return record

    on_action(ACK_ACTION, acknowledge)
    on_action(SNOOZE_ACTION, snooze)
    on_action(NOT_USEFUL_ACTION, not_useful)
    on_action(LOG_TASK_ACTION, log_task)
    on_action(ASSIGN_ACTION, assign)
    on_action(CRM_ACTION, opened("crm"), link=True)
    on_action(DASHBOARD_ACTION, opened("dashboard"), link=True)
    app.middleware(_replay_guard(engine))
    app.error(_on_error)
    return app


def _request_key(req: BoltRequest) -> tuple[str, int] | None:
    """(key, request time) that names one Slack request however often it arrives, or None.

    HTTP: the signed timestamp and signature (a replay is the same signed request sent again).
    Socket Mode: the payload's trigger_id (slash commands, buttons, views) or event_id (events):
    Slack delivers an envelope again when its acknowledgement was late or the connection dropped,
    with a new envelope id and the same payload."""
    if req.mode == "http":
        ts = (req.headers.get("x-slack-request-timestamp") or [""])[0]
        sig = (req.headers.get("x-slack-signature") or [""])[0]
        when = bigint_of(ts, 0)
        return (f"{ts}:{sig}", when) if when is not None and sig else None
    body = req.body if isinstance(req.body, Mapping) else {}
    ident = body.get("trigger_id") or body.get("event_id")
    return (f"socket:{body.get('team_id') or ''}:{ident}", -1) if isinstance(ident, str) and ident else None


def _replay_guard(engine: Engine) -> Callable[..., Any]:
    """Bolt middleware (after bolt's signature check): a request seen before is acknowledged and not
    run again (a replayed signed HTTP request, or a Socket Mode payload delivered twice). Wall-clock
    time, as Slack's signature window and redeliveries are (not the service's evaluation clock)."""

    def no_replays(req: BoltRequest, next: Callable[[], None]) -> BoltResponse | None:  # noqa: A002
        got = _request_key(req)
        if got is not None:
            key, ts = got
            now = int(time.time())
            if not first_time_seen(engine, hashlib.sha256(key.encode()).hexdigest(), ts if ts >= 0 else now, now):
                log.warning("a Slack request was delivered again (a replay or a redelivery); acknowledged, "
                            "not run again")
                return BoltResponse(status=200, body="")
        next()
        return None

    return no_replays


def _on_error(error: Exception, body: Any) -> BoltResponse:
    """Bolt's one error handler: whatever a listener or middleware raised, one log line and a 400."""
    kind = body.get("type") or body.get("command") if isinstance(body, Mapping) else None
    log.warning("Slack request (%s) not handled: %s: %s", shown(kind or "?", 60), type(error).__name__,
                shown(str(error), 200))
    return BoltResponse(status=400, body="usagebot could not handle this request")


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


_PAYLOAD_PARTS = (payload_utils.to_options, payload_utils.to_shortcut, payload_utils.to_action, payload_utils.to_view,
                  payload_utils.to_command, payload_utils.to_event, payload_utils.to_message, payload_utils.to_step)


def _dispatch(app: App, body: bytes, query: str, headers: Mapping[str, Any]) -> BoltResponse:
    """One HTTP request to the app. A body bolt cannot parse never reaches it: 401 when its signature
    is wrong (as bolt would answer), else 400, and never a traceback."""
    flat = {k.lower(): (v[0] if isinstance(v, list | tuple) and v else v) for k, v in headers.items()}
    if app._signing_secret and signature_header_problem(flat) is not None:  # noqa: SLF001
        return BoltResponse(status=401, body="")  # bolt's verifier would raise on these (int('²'), non-ASCII)
    try:
        req = BoltRequest(body=body.decode("utf-8"), query=query, headers=dict(headers))
        for extract in _PAYLOAD_PARTS:  # bolt takes these apart for every listener and its error handler,
            extract(req.body)  # so a payload of the wrong shape would fail there, past any handler
    except Exception as exc:  # ValueError (JSON, UTF-8), RecursionError, TypeError/AttributeError (shape)
        if not _signed(app._signing_secret, body, flat):  # noqa: SLF001
            return BoltResponse(status=401, body="")
        log.warning("malformed Slack request refused (400): %s: %s", type(exc).__name__, shown(str(exc), 200))
        return BoltResponse(status=400, body="malformed Slack request")
    return app.dispatch(req)


def _signed(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """Slack's v0 request signature over the raw bytes (slack_sdk's verifier decodes the body as UTF-8
    first and raises on bytes that are not; this check must not)."""
    ts, sig = str(headers.get("x-slack-request-timestamp") or ""), str(headers.get("x-slack-signature") or "")
    if not secret or signature_header_problem(headers) is not None:
        return False
    if not body.decode("utf-8", "replace").encode() == body:  # the common case goes through slack_sdk
        expected = "v0=" + hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, sig)
    return SignatureVerifier(secret).is_valid(body, ts, sig)


class _SlackWsgi:
    """bolt's WSGI adapter with usagebot's parsing guard (see `_dispatch`)."""

    def __init__(self, app: App, path: str) -> None:
        from slack_bolt.adapter.wsgi import SlackRequestHandler

        self.app = app
        self.handler = SlackRequestHandler(app, path=path)
        self.handler.dispatch = self._dispatch  # type: ignore[method-assign]

    def _dispatch(self, request: Any) -> BoltResponse:
        try:
            length = max(0, int(request.environ.get("CONTENT_LENGTH") or 0))
        except ValueError:
            length = 0
        body = request.environ["wsgi.input"].read(length) if "wsgi.input" in request.environ else b""
        return _dispatch(self.app, body, request.query_string, request.get_headers())

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.handler(environ, start_response)


def http_handler(app: App, config: SlackConfig | None = None) -> Any:
    """A WSGI application answering Slack's requests on config.http_path (404 elsewhere)."""
    return _SlackWsgi(app, config.http_path if config is not None else "/slack/events")


def dispatch_http(app: App, body: bytes | str, headers: Mapping[str, str],
                  query: str = "") -> tuple[int, dict[str, str], str]:
    """Handle one Slack HTTP request from any server: (status, headers, body) to send back.

    The signature and timestamp are verified by the app (401 when forged or stale); an unparsable
    body is 400."""
    raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body
    resp = _dispatch(app, raw, query, {k.lower(): [v] for k, v in headers.items()})
    return resp.status, {k: v[0] if isinstance(v, list) else v for k, v in resp.headers.items()}, resp.body


SLACK_MAX_AGE = 300  # seconds; slack-bolt refuses older request timestamps too (replay window)


_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")  # Slack's v0 signature: an HMAC-SHA256 in lower-case hex


def signature_header_problem(headers: Mapping[str, Any]) -> str | None:
    """What is wrong with a request's signature headers before any HMAC is computed, or None.

    The timestamp is ASCII digits within SLACK_MAX_AGE of now, the signature 'v0=' and 64 hex digits:
    anything else (a non-ASCII digit such as '²', 5,000 digits, a non-ASCII signature) would make
    slack_sdk's verifier raise instead of answering False."""
    ts, sig = str(headers.get("x-slack-request-timestamp") or ""), str(headers.get("x-slack-signature") or "")
    if not ts or not sig:
        return "missing X-Slack-Request-Timestamp / X-Slack-Signature headers"
    when = bigint_of(ts, 0)
    if when is None or abs(time.time() - when) > SLACK_MAX_AGE:
        return "stale or malformed X-Slack-Request-Timestamp"
    if _SIGNATURE.fullmatch(sig) is None:
        return "malformed X-Slack-Signature"
    return None


def slack_signature_headers(headers: Mapping[str, str]) -> Response | None:
    """Slack HTTP mode, before the body is read: the signature headers are there, well formed, and the
    timestamp is fresh. The signature itself (an HMAC of the body) is verified by slack-bolt once the
    body is in."""
    problem = signature_header_problem(headers)
    return None if problem is None else Response.json(401, {"error": problem})


class HttpModeServer:
    """Slack HTTP mode on its own port (bot.service.http_server: the service's hardened server)."""

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
    from bot.service.http_server import HttpServer, Route, wsgi_route

    route = Route("POST", config.http_path, wsgi_route(http_handler(app, config)), "slack",
                  max_body=2_000_000, authorize=slack_signature_headers)
    server = HttpModeServer(HttpServer(host, port, [route]))
    if block:
        server.serve_forever()
    else:
        server._server.start()
    return server
