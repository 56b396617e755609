"""A local fake of the Slack Web API (real HTTP on 127.0.0.1, for slack_sdk's WebClient(base_url=...)).

It behaves like Slack where usagebot depends on it:
- token check (Authorization: Bearer): not_authed / invalid_auth; apps.connections.open takes the app token;
- users.lookupByEmail, users.info, usergroups.users.list, conversations.open/list/history/replies
  (with message metadata when include_all_metadata is set, cursor paging);
- chat.postMessage (channel id or name, thread_ts, metadata, Block Kit validated with slack_sdk's
  block models -> invalid_blocks, no_text, channel_not_found, not_in_channel, thread_not_found)
  and chat.update (message_not_found);
- faults: a 503 outage, per-method 429 with Retry-After, 5xx, Slack errors, a dropped connection
  AFTER the request was processed (the client never learns the outcome), a body cut off mid-way, a
  non-JSON (HTML) 200 page or an error code (fatal_error) after processing, a hang after processing
  (to kill a client mid-delivery), and delays;
- response_url endpoints (/response/<id>) that record what an app posts to them (five posts each, then
  404 `used_url`, as Slack);
- Socket Mode: apps.connections.open returns a ws:// URL served here; `socket_send` pushes an
  envelope to the connected app and `socket_acks` records the app's acknowledgements;
- Sign in with Slack (OpenID Connect): GET /openid/connect/authorize (the person `oidc_user` approves
  at once, or denies when it is None; unknown client ids and redirect URIs are refused as Slack does),
  POST /api/openid.connect.token (client id and secret by HTTP Basic auth, each code once, the same
  redirect_uri) returning an RS256 id_token, GET /openid/connect/keys (the JWKS), and
  openid.connect.userInfo;
- file uploads as files_upload_v2 makes them: files.getUploadURLExternal (filename, length), a POST of
  the bytes to the upload URL it returned, files.completeUploadExternal (files [{id, title}], channel_id,
  thread_ts: shared in the thread as a message with `files`, which conversations.replies / history
  return; kept in Channel.file_messages, apart from the posted messages); missing_scope without
  files:write in `scopes`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

from tests.fakes.http import FakeServer

BOT_USER = "U0BOTUSER"
TEAM = "T0TEAM001"
RESPONSE_URL_USES = 5  # posts a response_url takes (Slack: "up to 5 times within 30 minutes")
OIDC_ISSUER = "https://slack.com"
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float  # time.monotonic() when received
    status: int = 200
    error: str = ""


@dataclass
class Fault:
    kind: str  # "status" | "error" | "ratelimit" | "drop" | "truncate" | "html" | "error_after" | "hang" | "delay"
    value: Any = None
    count: int = 1


@dataclass
class Channel:
    id: str
    name: str
    is_im: bool = False
    is_private: bool = False
    is_member: bool = True
    user: str | None = None  # the other user of a DM
    messages: list[dict[str, Any]] = field(default_factory=list)
    file_messages: list[dict[str, Any]] = field(default_factory=list)  # files shared here (uploads)


class FakeSlack:
    def __init__(self, token: str = "xoxb-test-token", app_token: str = "xapp-test-token",
                 clock: Callable[[], float] = time.time) -> None:
        self.token = token
        self.app_token = app_token
        self.clock = clock
        self.lock = threading.RLock()
        self.users: dict[str, dict[str, Any]] = {}  # id -> user
        self.channels: dict[str, Channel] = {}
        self.usergroups: dict[str, list[str]] = {}
        self.calls: list[Call] = []
        self.responses: dict[str, list[dict[str, Any]]] = {}
        self.response_event = threading.Condition(self.lock)
        self.faults: dict[str, list[Fault]] = {}
        self.outage = False
        self.reject_blocks = 0  # the next N posts/updates WITH blocks are answered invalid_blocks
        self.page_size = 100
        self.processed = threading.Event()  # set when a "hang" fault has processed its request
        self.release = threading.Event()  # set to let a hanging request finish
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self.socket_acks: list[dict[str, Any]] = []
        self.scopes: set[str] = {"chat:write", "files:write"}
        self.files: dict[str, dict[str, Any]] = {}  # file id -> {"filename", "length", "content", "title", ...}
        self.oidc_clients: dict[str, tuple[str, str]] = {}  # client id -> (secret, redirect URI)
        self.oidc_user: str | None = None  # who approves at the authorize page (None: denies)
        self.oidc_codes: dict[str, dict[str, Any]] = {}
        self.oidc_tokens: dict[str, str] = {}  # access token -> user id
        self.oidc_sign_with_other_key = False  # sign id_tokens with a key not in the JWKS (a forgery)
        self._oidc_key: Any = None
        self._ws_out: queue.Queue[bytes | None] | None = None
        self._ws_sock: socket.socket | None = None
        self.ws_connected = threading.Event()
        self.server = FakeServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       name="fake-slack", daemon=True)

    # ------------------------------------------------------------------ life

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def api_url(self) -> str:
        return self.url + "api/"

    def start(self) -> FakeSlack:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._ws_out is not None:
            self._ws_out.put(None)
        self.server.shutdown()
        self.server.server_close()

    @classmethod
    @contextmanager
    def running(cls, **kw: Any) -> Iterator[FakeSlack]:
        fake = cls(**kw).start()
        try:
            yield fake
        finally:
            fake.stop()

    # ----------------------------------------------------------------- setup

    def add_user(self, uid: str, email: str, name: str = "", tz: str | None = None) -> None:
        """A user; `tz` (IANA) is in users.info / lookupByEmail as Slack has it (with tz_offset)."""
        with self.lock:
            self.users[uid] = {"id": uid, "name": name or email.split("@")[0], "team_id": TEAM,
                               "profile": {"email": email, "real_name": name or email}}
            if tz:
                from datetime import datetime
                from zoneinfo import ZoneInfo

                offset = datetime.now(ZoneInfo(tz)).utcoffset()
                self.users[uid].update(tz=tz, tz_offset=int(offset.total_seconds()) if offset else 0)

    def add_channel(self, name: str, cid: str | None = None, member: bool = True, private: bool = False) -> str:
        with self.lock:
            cid = cid or f"C{next(self._ids):08d}"
            self.channels[cid] = Channel(cid, name.lstrip("#"), is_private=private, is_member=member)
            return cid

    def forget_dm(self, uid: str) -> str | None:
        """Slack no longer knows the bot's DM channel with `uid` (the app was reinstalled, the workspace
        migrated): its id answers channel_not_found; conversations.open makes a new one. The old id."""
        with self.lock:
            ch = next((c for c in self.channels.values() if c.is_im and c.user == uid), None)
            if ch is None:
                return None
            del self.channels[ch.id]
            return ch.id

    def move_user(self, uid: str, new_uid: str) -> None:
        """The user `uid` now has the id `new_uid` (a workspace migration): the old id is user_not_found."""
        with self.lock:
            user = self.users.pop(uid)
            self.users[new_uid] = {**user, "id": new_uid}

    def remake_channel(self, name: str) -> str:
        """Channel `name` deleted and made anew (a new id; the old one answers channel_not_found)."""
        with self.lock:
            old = self._find_channel(name)
            assert old is not None, f"no channel {name}"
            del self.channels[old.id]
        return self.add_channel(name, member=old.is_member, private=old.is_private)

    def add_oidc_client(self, client_id: str, client_secret: str, redirect_uri: str) -> None:
        """A Slack app with Sign in with Slack: its credentials and its one registered redirect URL."""
        with self.lock:
            self.oidc_clients[client_id] = (client_secret, redirect_uri)

    def add_usergroup(self, gid: str, users: list[str]) -> None:
        with self.lock:
            self.usergroups[gid] = list(users)

    def fail(self, method: str, kind: str, value: Any = None, count: int = 1) -> None:
        """Queue a fault for the next `count` calls of `method` ("*" = any method)."""
        with self.lock:
            self.faults.setdefault(method, []).append(Fault(kind, value, count))

    def rate_limit(self, method: str, retry_after: int, count: int = 1) -> None:
        self.fail(method, "ratelimit", retry_after, count)

    # ---------------------------------------------------------------- queries

    def channel(self, name_or_id: str) -> Channel:
        with self.lock:
            ch = self._find_channel(name_or_id)
            assert ch is not None, f"no channel {name_or_id}"
            return ch

    def top_level(self, name_or_id: str) -> list[dict[str, Any]]:
        return [m for m in self.channel(name_or_id).messages if not m.get("thread_ts") or m["thread_ts"] == m["ts"]]

    def replies_of(self, name_or_id: str, ts: str) -> list[dict[str, Any]]:
        return [m for m in self.channel(name_or_id).messages if m.get("thread_ts") == ts and m["ts"] != ts]

    def dm_with(self, uid: str) -> Channel | None:
        with self.lock:
            return next((c for c in self.channels.values() if c.is_im and c.user == uid), None)

    def calls_of(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def wait_response(self, rid: str, n: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.response_event:
            while len(self.responses.get(rid, [])) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no response_url post {n} for {rid} within {timeout}s "
                                         f"(got {self.responses.get(rid)})")
                self.response_event.wait(left)
            return list(self.responses[rid])

    def response_url(self, rid: str) -> str:
        return f"{self.url}response/{rid}"

    # ---------------------------------------------------------- socket mode

    def socket_send(self, envelope: dict[str, Any], timeout: float = 5.0) -> None:
        """Push one Socket Mode envelope to the connected app."""
        if not self.ws_connected.wait(timeout) or self._ws_out is None:
            raise AssertionError("no Socket Mode connection")
        self._ws_out.put(_ws_frame(json.dumps(envelope).encode(), opcode=1))

    def socket_close(self) -> None:
        """Slack closes the Socket Mode connection (as it does from time to time)."""
        if self._ws_sock is not None:
            try:
                self._ws_sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def wait_socket_ack(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.response_event:
            while True:
                for a in self.socket_acks:
                    if a.get("envelope_id") == envelope_id:
                        return a
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no Socket Mode ack for {envelope_id}")
                self.response_event.wait(left)

    # ------------------------------------------------------------- behaviour

    def _find_channel(self, name_or_id: str) -> Channel | None:
        if name_or_id in self.channels:
            return self.channels[name_or_id]
        name = name_or_id.lstrip("#")
        return next((c for c in self.channels.values() if c.name == name and not c.is_im), None)

    def _take_fault(self, method: str) -> Fault | None:
        with self.lock:
            for key in (method, "*"):
                q = self.faults.get(key) or []
                if q:
                    f = q[0]
                    f.count -= 1
                    if f.count <= 0:
                        q.pop(0)
                    return f
        return None

    def _new_ts(self) -> str:
        return f"{int(self.clock())}.{next(self._seq):06d}"

    def dispatch(self, method: str, p: dict[str, Any], auth: str) -> dict[str, Any]:
        if method == "openid.connect.token":  # the app's client credentials, not a token
            with self.lock:
                return self.m_openid_connect_token(p, auth)
        if method == "openid.connect.userInfo":
            with self.lock:
                uid = self.oidc_tokens.get(auth)
                if uid is None:
                    return {"ok": False, "error": "invalid_auth"}
                return {"ok": True, **self._oidc_claims(uid, "", "")}
        expected = self.app_token if method == "apps.connections.open" else self.token
        if not auth:
            return {"ok": False, "error": "not_authed"}
        if auth != expected:
            return {"ok": False, "error": "invalid_auth"}
        fn = getattr(self, "m_" + method.replace(".", "_"), None)
        if fn is None:
            return {"ok": False, "error": "unknown_method"}
        with self.lock:
            return fn(p)  # type: ignore[no-any-return]

    # --- methods (called with the lock held)

    def m_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "usagebot",
                "team_id": TEAM, "user_id": BOT_USER, "bot_id": "B0BOT0001", "is_enterprise_install": False}

    def m_users_lookupByEmail(self, p: dict[str, Any]) -> dict[str, Any]:
        email = str(p.get("email", "")).lower()
        for u in self.users.values():
            if u["profile"]["email"].lower() == email:
                return {"ok": True, "user": u}
        return {"ok": False, "error": "users_not_found"}

    def m_users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        u = self.users.get(str(p.get("user")))
        return {"ok": True, "user": u} if u else {"ok": False, "error": "user_not_found"}

    def m_usergroups_users_list(self, p: dict[str, Any]) -> dict[str, Any]:
        g = self.usergroups.get(str(p.get("usergroup")))
        return {"ok": True, "users": g} if g is not None else {"ok": False, "error": "no_such_subteam"}

    def m_conversations_open(self, p: dict[str, Any]) -> dict[str, Any]:
        uid = str(p.get("users", ""))
        if uid not in self.users:
            return {"ok": False, "error": "user_not_found"}
        ch = next((c for c in self.channels.values() if c.is_im and c.user == uid), None)
        if ch is None:
            ch = Channel(f"D{next(self._ids):08d}", "", is_im=True, user=uid)
            self.channels[ch.id] = ch
        return {"ok": True, "channel": {"id": ch.id}}

    def _page(self, items: list[Any], p: dict[str, Any]) -> tuple[list[Any], str]:
        start = int(p.get("cursor") or 0)
        limit = min(int(p.get("limit") or self.page_size), self.page_size)
        nxt = start + limit
        return items[start:nxt], (str(nxt) if nxt < len(items) else "")

    def m_conversations_list(self, p: dict[str, Any]) -> dict[str, Any]:
        chans = [{"id": c.id, "name": c.name, "is_private": c.is_private, "is_member": c.is_member}
                 for c in self.channels.values() if not c.is_im]
        page, nxt = self._page(chans, p)
        return {"ok": True, "channels": page, "response_metadata": {"next_cursor": nxt}}

    def _visible(self, m: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in m.items() if k != "metadata"}
        if _truthy(p.get("include_all_metadata")) and m.get("metadata"):
            out["metadata"] = m["metadata"]
        return out

    def _readable(self, p: dict[str, Any]) -> Channel | dict[str, Any]:
        ch = self.channels.get(str(p.get("channel", "")))
        if ch is None:
            return {"ok": False, "error": "channel_not_found"}
        if not ch.is_member and not ch.is_im:
            return {"ok": False, "error": "not_in_channel"}
        return ch

    def m_conversations_history(self, p: dict[str, Any]) -> dict[str, Any]:
        ch = self._readable(p)
        if isinstance(ch, dict):
            return ch
        oldest = float(p.get("oldest") or 0)
        every = sorted(ch.messages + ch.file_messages, key=lambda m: float(m["ts"]))
        msgs = [self._visible(m, p) for m in reversed(every)
                if (not m.get("thread_ts") or m["thread_ts"] == m["ts"]) and float(m["ts"]) > oldest]
        page, nxt = self._page(msgs, p)
        return {"ok": True, "messages": page, "has_more": bool(nxt), "response_metadata": {"next_cursor": nxt}}

    def m_conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        ch = self._readable(p)
        if isinstance(ch, dict):
            return ch
        ts = str(p.get("ts", ""))
        parent = next((m for m in ch.messages if m["ts"] == ts), None)
        if parent is None:
            return {"ok": False, "error": "thread_not_found"}
        oldest = float(p.get("oldest") or 0)
        thread = sorted(ch.messages + ch.file_messages, key=lambda m: float(m["ts"]))
        replies = [self._visible(m, p) for m in thread
                   if m.get("thread_ts") == ts and m["ts"] != ts and float(m["ts"]) > oldest]
        page, nxt = self._page([self._visible(parent, p), *replies], p)
        return {"ok": True, "messages": page, "has_more": bool(nxt), "response_metadata": {"next_cursor": nxt}}

    def _check_content(self, p: dict[str, Any]) -> dict[str, Any] | None:
        blocks = _json_param(p.get("blocks"))
        text = p.get("text")
        if blocks and self.reject_blocks > 0:
            self.reject_blocks -= 1
            return {"ok": False, "error": "invalid_blocks",
                    "response_metadata": {"messages": ["[ERROR] rejected by the test [json-pointer:/blocks]"]}}
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        if text and len(str(text)) > 40_000:
            return {"ok": False, "error": "msg_too_long"}
        if blocks:
            problems = block_problems(blocks)
            if problems:
                return {"ok": False, "error": "invalid_blocks",
                        "response_metadata": {"messages": [f"[ERROR] {m}" for m in problems]}}
        return None

    def m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        ch = self._find_channel(str(p.get("channel", "")))
        if ch is None:
            return {"ok": False, "error": "channel_not_found"}
        if not ch.is_member:
            return {"ok": False, "error": "not_in_channel"}
        bad = self._check_content(p)
        if bad:
            return bad
        thread_ts = p.get("thread_ts") or None
        if thread_ts and not any(m["ts"] == thread_ts for m in ch.messages):
            return {"ok": False, "error": "thread_not_found"}
        ts = self._new_ts()
        msg = {"type": "message", "user": BOT_USER, "bot_id": "B0BOT0001", "ts": ts, "text": p.get("text", ""),
               "blocks": _json_param(p.get("blocks")) or [], "edits": 0}
        if thread_ts:
            msg["thread_ts"] = thread_ts
            parent = next(m for m in ch.messages if m["ts"] == thread_ts)
            parent["thread_ts"] = thread_ts
            parent["reply_count"] = parent.get("reply_count", 0) + 1
        md = _json_param(p.get("metadata"))
        if md:
            msg["metadata"] = md
        ch.messages.append(msg)
        return {"ok": True, "channel": ch.id, "ts": ts, "message": {k: v for k, v in msg.items() if k != "edits"}}

    def m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        ch = self.channels.get(str(p.get("channel", "")))
        if ch is None:
            return {"ok": False, "error": "channel_not_found"}
        msg = next((m for m in ch.messages if m["ts"] == p.get("ts")), None)
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        bad = self._check_content(p)
        if bad:
            return bad
        msg["text"] = p.get("text", "")
        msg["blocks"] = _json_param(p.get("blocks")) or []
        msg["edits"] = msg.get("edits", 0) + 1
        return {"ok": True, "channel": ch.id, "ts": msg["ts"], "text": msg["text"]}

    # --- Sign in with Slack (OpenID Connect)

    def _oidc_keys(self) -> Any:
        if self._oidc_key is None:
            from cryptography.hazmat.primitives.asymmetric import rsa

            self._oidc_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._oidc_key

    def jwks(self) -> dict[str, Any]:
        import jwt

        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._oidc_keys().public_key()))
        return {"keys": [{**jwk, "kid": "fake-slack-1", "alg": "RS256", "use": "sig"}]}

    def authorize(self, q: dict[str, str]) -> tuple[int, str]:
        """(status, redirect Location or error text) of GET /openid/connect/authorize."""
        with self.lock:
            client = self.oidc_clients.get(q.get("client_id", ""))
            if client is None:
                return 400, "Invalid client_id parameter"
            if q.get("redirect_uri") != client[1]:
                return 400, "redirect_uri did not match any configured URIs"
            if q.get("response_type") != "code" or "openid" not in q.get("scope", "").replace(",", " ").split():
                return 400, "Invalid scope or response_type"
            state = q.get("state", "")
            sep = "&" if "?" in client[1] else "?"
            if self.oidc_user is None:
                return 302, f"{client[1]}{sep}error=access_denied&state={state}"
            code = f"code-{next(self._ids)}"
            self.oidc_codes[code] = {"client_id": q["client_id"], "redirect_uri": q["redirect_uri"],
                                     "nonce": q.get("nonce", ""), "user": self.oidc_user, "used": False}
            return 302, f"{client[1]}{sep}code={code}&state={state}"

    def _oidc_claims(self, uid: str, client_id: str, nonce: str) -> dict[str, Any]:
        u = self.users[uid]
        now = int(self.clock())
        claims = {"iss": OIDC_ISSUER, "sub": uid, "aud": client_id, "exp": now + 3600, "iat": now,
                  "auth_time": now, "https://slack.com/user_id": uid,
                  "https://slack.com/team_id": u.get("team_id", TEAM), "email": u["profile"]["email"],
                  "email_verified": True, "name": u["profile"].get("real_name", u["name"]), "locale": "en-US"}
        if nonce:
            claims["nonce"] = nonce
        return claims

    def m_openid_connect_token(self, p: dict[str, Any], auth: str) -> dict[str, Any]:
        import jwt

        client_id, _, secret = base64.b64decode(auth.removeprefix("Basic ").strip() or b"").decode().partition(":") \
            if auth.startswith("Basic ") else (str(p.get("client_id", "")), "", str(p.get("client_secret", "")))
        client = self.oidc_clients.get(client_id)
        if client is None:
            return {"ok": False, "error": "invalid_client_id"}
        if secret != client[0]:
            return {"ok": False, "error": "bad_client_secret"}
        grant = self.oidc_codes.get(str(p.get("code", "")))
        if grant is None or grant["used"] or grant["client_id"] != client_id:
            return {"ok": False, "error": "invalid_code"}
        grant["used"] = True
        if p.get("redirect_uri") != grant["redirect_uri"]:
            return {"ok": False, "error": "bad_redirect_uri"}
        key = self._oidc_keys()
        if self.oidc_sign_with_other_key:
            from cryptography.hazmat.primitives.asymmetric import rsa

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        id_token = jwt.encode(self._oidc_claims(grant["user"], client_id, grant["nonce"]), key, algorithm="RS256",
                              headers={"kid": "fake-slack-1"})
        access = f"xoxp-oidc-{next(self._ids)}"
        self.oidc_tokens[access] = grant["user"]
        return {"ok": True, "access_token": access, "token_type": "Bearer", "id_token": id_token}

    # --- files (files_upload_v2)

    def files_in(self, name_or_id: str, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """The files shared in a channel (in one thread), oldest first, with their bytes."""
        ch = self.channel(name_or_id)
        with self.lock:
            return [{**self.files[f["id"]], "ts": m["ts"]} for m in ch.file_messages
                    if thread_ts is None or m.get("thread_ts") == thread_ts for f in m["files"]]

    def m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        if "files:write" not in self.scopes:
            return {"ok": False, "error": "missing_scope", "needed": "files:write"}
        name, length = str(p.get("filename") or ""), str(p.get("length") or "")
        if not name or not length.isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        fid = f"F{next(self._ids):08d}"
        self.files[fid] = {"id": fid, "filename": name, "length": int(length), "content": None, "shared": False}
        return {"ok": True, "upload_url": f"{self.url}upload/{fid}", "file_id": fid}

    def receive_upload(self, fid: str, body: bytes) -> bool:
        with self.lock:
            f = self.files.get(fid)
            if f is None:
                return False
            f["content"] = body
            return True

    def m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        if "files:write" not in self.scopes:
            return {"ok": False, "error": "missing_scope", "needed": "files:write"}
        items = _json_param(p.get("files"))
        if not isinstance(items, list) or not items:
            return {"ok": False, "error": "invalid_arguments"}
        done = []
        for it in items:
            f = self.files.get(str((it or {}).get("id")))
            if f is None or f["content"] is None or f["shared"]:
                return {"ok": False, "error": "file_not_found"}
            if len(f["content"]) != f["length"]:
                return {"ok": False, "error": "file_uploaded_size_mismatch"}
            done.append((f, str(it.get("title") or f["filename"])))
        channel_id = p.get("channel_id") or None
        thread_ts = p.get("thread_ts") or None
        if channel_id is not None:
            ch = self.channels.get(str(channel_id))
            if ch is None:
                return {"ok": False, "error": "channel_not_found"}
            if not ch.is_member and not ch.is_im:
                return {"ok": False, "error": "not_in_channel"}
            if thread_ts and not any(m["ts"] == thread_ts for m in ch.messages):
                return {"ok": False, "error": "thread_not_found"}
        out = []
        for f, title in done:
            f.update(shared=True, title=title, mimetype="image/png" if f["filename"].endswith(".png") else "")
            out.append({"id": f["id"], "name": f["filename"], "title": title, "size": f["length"],
                        "mimetype": f["mimetype"]})
        if channel_id is not None:
            msg: dict[str, Any] = {"type": "message", "user": BOT_USER, "ts": self._new_ts(),
                                   "text": str(p.get("initial_comment") or ""), "files": out, "upload": True}
            if thread_ts:
                msg["thread_ts"] = thread_ts
                parent = next(m for m in ch.messages if m["ts"] == thread_ts)
                parent["thread_ts"] = thread_ts
                parent["reply_count"] = parent.get("reply_count", 0) + 1
            ch.file_messages.append(msg)
        return {"ok": True, "files": out}

    def m_apps_connections_open(self, p: dict[str, Any]) -> dict[str, Any]:
        host, port = self.server.server_address[:2]
        return {"ok": True, "url": f"ws://{host}:{port}/socket?ticket=t{next(self._ids)}"}

    # ------------------------------------------------------------------ http

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json; charset=utf-8",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _params(self) -> dict[str, Any]:
                u = urlparse(self.path)
                params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(u.query).items()}
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                ctype = self.headers.get("Content-Type", "")
                if raw and "json" in ctype:
                    params.update(json.loads(raw))
                elif raw:
                    params.update({k: v[-1] for k, v in parse_qs(raw.decode()).items()})
                return params

            def do_GET(self) -> None:  # noqa: N802
                u = urlparse(self.path)
                if u.path == "/socket" and self.headers.get("Upgrade", "").lower() == "websocket":
                    fake._serve_websocket(self)
                    return
                if u.path == "/openid/connect/keys":
                    with fake.lock:
                        fake.calls.append(Call("openid.connect.keys", {}, time.monotonic(), 200))
                    self._send(200, json.dumps(fake.jwks()).encode())
                    return
                if u.path == "/openid/connect/authorize":
                    status, where = fake.authorize({k: v[-1] for k, v in parse_qs(u.query).items()})
                    with fake.lock:
                        fake.calls.append(Call("openid.connect.authorize", {"query": u.query}, time.monotonic(),
                                               status))
                    if status == 302:
                        self._send(302, b"", "text/plain", {"Location": where})
                    else:
                        self._send(status, where.encode(), "text/plain")
                    return
                self._api()

            def do_POST(self) -> None:  # noqa: N802
                path = urlparse(self.path).path
                if path.startswith("/upload/"):  # files_upload_v2 step 2: the bytes, to the URL we issued
                    n = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(n) if n else b""
                    with fake.lock:
                        fake.calls.append(Call("upload", {"file": path.rsplit("/", 1)[-1], "bytes": len(body)},
                                               time.monotonic()))
                    if fake.outage:
                        self._send(503, b"down", "text/plain")
                    elif fake.receive_upload(path.rsplit("/", 1)[-1], body):
                        self._send(200, f"OK - {len(body)}".encode(), "text/plain")
                    else:
                        self._send(404, b"no such upload", "text/plain")
                    return
                if path.startswith("/response/"):
                    rid = path.rsplit("/", 1)[-1]
                    body = self._params()
                    with fake.response_event:
                        used = len(fake.responses.get(rid, []))
                        if used < RESPONSE_URL_USES:
                            fake.responses.setdefault(rid, []).append(body)
                            fake.response_event.notify_all()
                    if used >= RESPONSE_URL_USES:  # Slack: a response_url takes five posts
                        self._send(404, b"used_url", "text/plain")
                    else:
                        self._send(200, b"ok", "text/plain")
                    return
                self._api()

            def _api(self) -> None:
                path = urlparse(self.path).path
                if not path.startswith("/api/"):
                    self._send(404, b"not found", "text/plain")
                    return
                method = path[len("/api/"):]
                params = self._params()
                raw_auth = self.headers.get("Authorization", "")
                auth = raw_auth if raw_auth.startswith("Basic ") else raw_auth.removeprefix("Bearer ").strip()
                if not auth and params.get("token"):
                    auth = str(params["token"])
                call = Call(method, {k: v for k, v in params.items() if k != "token"}, time.monotonic())
                with fake.lock:
                    fake.calls.append(call)
                if fake.outage:
                    call.status = 503
                    self._send(503, b"<html><body>Slack is down for maintenance</body></html>", "text/html")
                    return
                fault = fake._take_fault(method)
                if fault is not None and fault.kind == "delay":
                    time.sleep(float(fault.value))
                    fault = None
                if fault is not None and fault.kind == "status":
                    call.status = int(fault.value)
                    self._send(call.status, b"<html>upstream error</html>", "text/html")
                    return
                if fault is not None and fault.kind == "ratelimit":
                    call.status, call.error = 429, "ratelimited"
                    self._send(429, json.dumps({"ok": False, "error": "ratelimited"}).encode(),
                               headers={} if fault.value is None else {"Retry-After": str(fault.value)})
                    return
                if fault is not None and fault.kind == "error":
                    call.error = str(fault.value)
                    self._send(200, json.dumps({"ok": False, "error": fault.value}).encode())
                    return
                result = fake.dispatch(method, params, auth)
                call.error = "" if result.get("ok") else str(result.get("error"))
                if fault is not None and fault.kind == "drop":
                    self.close_connection = True  # processed, but the client never hears back
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None and fault.kind == "truncate":  # processed; the body is cut off mid-way
                    body = json.dumps(result).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None and fault.kind == "error_after":  # processed, then answered an error
                    call.error = str(fault.value)
                    self._send(200, json.dumps({"ok": False, "error": fault.value}).encode())
                    return
                if fault is not None and fault.kind == "html":  # processed; a proxy answers 200 with a page
                    self._send(200, b"<html><body>Bad gateway</body></html>", "text/html")
                    return
                if fault is not None and fault.kind == "hang":
                    fake.processed.set()
                    fake.release.wait(30)
                    try:
                        self._send(200, json.dumps(result).encode())
                    except OSError:
                        pass
                    return
                self._send(200, json.dumps(result).encode())

        return Handler

    # ---------------------------------------------------------- websocket

    def _serve_websocket(self, h: BaseHTTPRequestHandler) -> None:
        key = h.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        h.send_response(101, "Switching Protocols")
        h.send_header("Upgrade", "websocket")
        h.send_header("Connection", "Upgrade")
        h.send_header("Sec-WebSocket-Accept", accept)
        h.end_headers()
        h.wfile.flush()
        sock = h.connection
        self._ws_sock = sock
        out: queue.Queue[bytes | None] = queue.Queue()
        self._ws_out = out
        out.put(_ws_frame(json.dumps({"type": "hello", "num_connections": 1}).encode(), opcode=1))
        self.ws_connected.set()

        def writer() -> None:
            while True:
                frame = out.get()
                if frame is None:
                    return
                try:
                    sock.sendall(frame)
                except OSError:
                    return

        threading.Thread(target=writer, daemon=True).start()
        try:
            while True:
                opcode, payload = _ws_read(h.rfile)
                if opcode is None or opcode == 8:
                    break
                if opcode == 9:  # ping -> pong
                    out.put(_ws_frame(payload, opcode=10))
                elif opcode == 1:
                    msg = json.loads(payload)
                    with self.response_event:
                        self.socket_acks.append(msg)
                        self.response_event.notify_all()
        except OSError:
            pass
        finally:
            out.put(None)
            h.close_connection = True


def _ws_frame(payload: bytes, opcode: int) -> bytes:
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


def _ws_read(rfile: Any) -> tuple[int | None, bytes]:
    hdr = rfile.read(2)
    if len(hdr) < 2:
        return None, b""
    opcode = hdr[0] & 0x0F
    masked = hdr[1] & 0x80
    n = hdr[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", rfile.read(8))[0]
    mask = rfile.read(4) if masked else b""
    data = rfile.read(n)
    if masked:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return opcode, data


def _truthy(v: Any) -> bool:
    return str(v).lower() in ("1", "true", "yes")


def _json_param(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in ("[", "{"):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def block_problems(blocks: Any) -> list[str]:
    """Why Slack would answer invalid_blocks (slack_sdk's block models + Slack's block count)."""
    if not isinstance(blocks, list):
        return ["blocks must be an array"]
    out: list[str] = []
    if len(blocks) > 50:
        out.append(f"no more than 50 items allowed [json-pointer:/blocks] (got {len(blocks)})")
    for i, b in enumerate(blocks):
        if not isinstance(b, dict):
            out.append(f"must be an object [json-pointer:/blocks/{i}]")
            continue
        parsed = Block.parse(b)
        if parsed is None:
            out.append(f"unsupported type [json-pointer:/blocks/{i}/type]")
            continue
        try:
            parsed.to_dict()
        except SlackObjectFormationError as exc:
            out.append(f"{exc} [json-pointer:/blocks/{i}]")
        if b.get("type") == "header" and (b.get("text") or {}).get("type") != "plain_text":
            out.append(f"must be plain_text [json-pointer:/blocks/{i}/text/type]")
    return out
