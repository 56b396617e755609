"""One registry of every configured secret, and `mask()`: the one way any text is cleaned of them.

Who registers what:
- every `rules.config.secrets.Secret` registers its value when it is made (tokens, passwords, api keys,
  client secrets, signing secrets, private keys, SQL source URLs, the push shared secret...);
- the config parser registers what is a secret but not a `Secret`: the password of the storage URL
  and of any URL's user info, URL query parameters and `params` / `headers` entries whose name looks
  secret (api_key, token, signature...), and values taken from environment variables whose name looks
  secret (``${BILLING_API_KEY}``);
- a secret that is an Authorization header's value ("Basic dXNl...", "Bearer abc") registers the
  credentials in it too: the token alone, a Basic pair's password (decoded) and the pair;
- clients register secrets they obtain at run time (a Salesforce session id after login), and
  basic-auth pairs (`register_pair`), so base64("user:password") is masked whole.

`mask(text)` replaces with ``***``, anywhere in the text:
- each secret in every form a peer or a library echoes it in: raw, URL/percent-encoded (upper- and
  lower-case hex, "+" for spaces), JSON-, repr- and HTML-escaped, hex, base64 (standard and URL-safe,
  at each of the three byte alignments, so the base64 of "user:password" or of a whole header is
  caught without knowing what was around the secret), JSON-escaped twice (a JSON error quoting the
  JSON it was sent), the repr of its UTF-8 bytes (b'\\xd0\\xba...'),
  and, for a non-ASCII secret, its UTF-8 bytes read as ISO-8859-1 or windows-1252 (a peer's echo
  decoded with the charset it declared: "ÐºÐ»Ñ...");
- a prefix or a suffix of at least `FRAGMENT` characters of any of those forms: what is left of a
  secret where a string was cut (the start of it at the end of a cut, the end of it in a tail).

`clip(text, limit)` masks first and cuts after, so a cut never leaves part of a secret visible.
`RedactingFilter` applies `mask` to every log record (message, arguments, extra fields, traceback);
`bot.service.logs.setup_logging` puts it on the root handler, and on logging's last-resort handler.

Secrets shorter than `MIN_SECRET` characters are not masked (they would blank out ordinary words),
except where their place says what they are: the password of a URL's user info
(``scheme://user:password@``) is masked in any text, registered or not, whatever its length (a web
URL's up to a "/", "?" or "#", a database URL's up to the first "@", as SQLAlchemy reads it; text
like "https://host:443,user@example.org" is masked too: the rule errs on the side of masking).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

MIN_SECRET = 4
FRAGMENT = 8  # shortest prefix/suffix of a secret masked on its own (a cut secret)
MASK = "***"
_LINE_PART = 16  # lines of a multi-line secret (a PEM key) at least this long are secrets of their own

_SECRET_WORDS = frozenset({
    "pass", "passwd", "password", "pwd", "secret", "token", "key", "apikey", "auth", "authorization",
    "signature", "sig", "credential", "credentials", "session", "sessionid", "sid", "cookie", "bearer",
    "private", "jwt", "otp", "pin",
})
_SECRET_ENDINGS = ("key", "token", "secret", "password", "passwd", "signature", "credential", "credentials")
_LOWER_HEX = re.compile(r"%[0-9A-F]{2}")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# The password of any URL's user info in any text, known or not, of any length: a 1-3 character
# database password is below MIN_SECRET, but "postgresql://bot:pw@db/..." in an error still showed it.
# A web URL's ends at "/", "?" or "#" (they start its path); a database URL's, as SQLAlchemy parses it,
# at the first "@" ("p/w" is a password there), or at the last "@" before its host's "/" (an unescaped
# "@" in the password: "r:a@b@h/d" masks "a@b", either reading's password). The lookbehind, not \b:
# a \b start was tried again at every word boundary of a long run like "a.b.c..." (160 KB of it took
# 16 s, a quadratic scan).
_SCHEME_START = r"(?<![A-Za-z0-9+.\-])"
_PART = 256  # the longest user or password this free-text rule looks at: each try is bounded, so a text of
# many "a://b:" and no "@" is scanned in linear time (unbounded, 160 KB of it took 70 s); a longer
# registered password is masked as a registered secret
_URL_PASSWORD = re.compile(
    _SCHEME_START + rf"((?:https?|wss?)://[^/?#@\s:]{{0,{_PART}}}:)([^/?#\s]{{1,{_PART}}})@"
    "|" + _SCHEME_START + rf"((?!(?:https?|wss?)://)[A-Za-z][A-Za-z0-9+.\-]{{0,32}}://[^/?#@\s:]{{0,{_PART}}}:)"
    rf"([^@\s]{{1,{_PART}}}(?:@[^@/\s]{{0,{_PART}}}){{0,4}})@", re.IGNORECASE)
_DB_USERINFO = re.compile(r"^(?!(?:https?|wss?)://)[A-Za-z][A-Za-z0-9+.\-]*://([^/?#@:]*):([^@]*)@", re.IGNORECASE)


def _masked_url_password(m: re.Match[str]) -> str:
    return f"{m.group(1) or m.group(3)}{MASK}@"


def looks_secret(name: str) -> bool:
    """Whether a parameter, header or environment variable name looks like it holds a secret."""
    snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    words = [w for w in re.split(r"[^a-z0-9]+", snake) if w]
    return any(w in _SECRET_WORDS for w in words) or "".join(words).endswith(_SECRET_ENDINGS)


def _base64_forms(raw: bytes) -> list[str]:
    """The base64 text of `raw` whole, and the part of it that does not depend on its neighbours at
    each byte alignment (what appears inside the base64 of a longer string holding `raw`)."""
    out: list[str] = []
    n = len(raw)
    for alphabet in (base64.b64encode, base64.urlsafe_b64encode):
        out.append(alphabet(raw).decode("ascii"))
        for pad in (0, 1, 2):
            enc = alphabet(b"\0" * pad + raw).decode("ascii")
            start, end = -(-8 * pad // 6), 8 * (pad + n) // 6
            out.append(enc[start:end])
    return out


def _either_hex(encoded: str) -> set[str]:
    """Percent-encoded text with its escapes in upper-case hex (as given) and in lower-case hex."""
    return {encoded, _LOWER_HEX.sub(lambda m: m.group(0).lower(), encoded)}


def _in_url(b64: Iterable[str]) -> set[str]:
    """Base64 forms as they read inside a URL: their + / = percent-encoded (%2B or %2b)."""
    return {f for b in b64 for f in _either_hex(quote(b, safe=""))}


def forms(secret: str) -> set[str]:
    """Every encoding of `secret` that `mask` looks for."""
    raw = secret.encode("utf-8", "surrogatepass")
    out = {secret, html.escape(secret), html.escape(secret, quote=False), repr(secret)[1:-1],
           json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], raw.hex(), raw.hex().upper()}
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, safe="")):
        out |= _either_hex(encoded)
    b64 = _base64_forms(raw)
    out.update(b64)
    out |= _in_url(b64)
    # repr quotes with ' (escaping it) once the text around has a " too; its UTF-8 bytes as Python
    # shows them (b'\xd0\xba...': an exception or a log line holding the raw bytes)
    out |= {repr(secret + '"')[1:-2], repr(raw)[2:-1], repr(raw + b'"')[2:-2]}
    for escaped in (json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        out.add(json.dumps(escaped)[1:-1])  # a JSON string inside one (an error quoting the JSON it was sent)
    if not raw.isascii():  # the UTF-8 bytes decoded as a peer's declared single-byte charset ("ÐºÐ»Ñ...")
        for wrong in (raw.decode("latin-1"), raw.decode("cp1252", "replace")):
            out |= {wrong, repr(wrong)[1:-1], repr(wrong + '"')[1:-2], json.dumps(wrong)[1:-1]}
    return {f for f in out if len(f) >= MIN_SECRET}


def _userinfo(text: str) -> tuple[str, str] | None:
    """(user, password) of a URL's user info, decoded; the user info ends at the last "@" before the
    host (so an unescaped "@" in a password works too)."""
    m = re.match(_URL.pattern + r"([^/?#]*)@", text)
    if m is None or ":" not in m.group(1):
        return None
    user, password = m.group(1).split(":", 1)
    return unquote(user), unquote(password)


def _url_parts(text: str) -> list[str]:
    """Secrets inside a URL: the user-info password and secret-looking query parameters. A database
    URL's password is also read as SQLAlchemy reads it (up to the first "@": "p/w", "p#w" and "p w"
    are passwords there, which a web URL's parse ends at the "/")."""
    found: list[str] = []
    m = re.match(_URL.pattern + r"([^/?#]*)@", text)
    if m is not None and ":" in m.group(1):
        password = m.group(1).split(":", 1)[1]
        found += [password, unquote(password)]
    db = _DB_USERINFO.match(text)
    if db is not None and db.group(2):
        found += [db.group(2), unquote(db.group(2))]
    try:
        query = urlsplit(text).query
    except ValueError:
        query = ""
    for name, value in parse_qsl(query, keep_blank_values=False):
        if looks_secret(name):
            found.append(value)
    for _name, value in re.findall(r"\b(password|passwd|pwd|pass)=([^&#\s;]+)", text, flags=re.IGNORECASE):
        found.append(value)
    return found


# an Authorization header's value ("Basic dXNl...", "Bearer abc"); known schemes only: a two-word
# passphrase is not a scheme and a credential
_AUTH_VALUE = re.compile(r"^(basic|bearer|token|apikey|api-key|jwt|oauth|sso-key)\s+(\S+)$", re.IGNORECASE)


def _basic_pair(token: str) -> tuple[str, str] | None:
    """(user, password) of a Basic credential's base64, when it decodes to "user:password"."""
    try:
        text = base64.b64decode(token, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep and password else None


class Redactor:
    """The set of known secrets and the index `mask` searches with (rebuilt when a secret is added)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, None] = {}
        self._pairs: dict[str, None] = {}  # "user:password": only its base64 is a secret (the user is not)
        self._full: list[str] = []  # forms shorter than FRAGMENT: masked only whole
        self._long: list[str] = []  # forms of FRAGMENT or more: masked whole, by prefix or by suffix

    # ------------------------------------------------------------------ registering

    def register(self, value: str | None) -> None:
        """A secret value (and the secrets inside it: a URL's password, the lines of a PEM key)."""
        if not value:
            return
        inside = _url_parts(value)
        # a database URL: its password is the secret, the host and database are not; a web URL given
        # as a secret (a webhook) is secret whole, unless the secret is its password or key
        scheme = _URL.match(value)
        web = scheme is not None and scheme.group(0).lower() in ("http://", "https://")
        parts = inside if scheme is not None and (inside or not web) else [value, *inside]
        stripped = value.strip()
        if "\n" in stripped:
            parts += [ln.strip() for ln in stripped.splitlines()
                      if len(ln.strip()) >= _LINE_PART and not ln.strip().startswith("-----")]
        pair = _userinfo(value)
        pairs = [f"{pair[0]}:{pair[1]}"] if pair and pair[1] else []
        header = _AUTH_VALUE.match(stripped)
        if header is not None:  # an Authorization header's value: the credentials in it are secrets alone
            parts.append(header.group(2))
            basic = _basic_pair(header.group(2)) if header.group(1).lower() == "basic" else None
            if basic is not None:
                if len(basic[1]) >= FRAGMENT:  # a short password alone ("admin") would blank out words;
                    parts.append(basic[1])     # the pair's base64 covers it in the header's own form
                pairs.append(f"{basic[0]}:{basic[1]}")
        self._add(parts, pairs)

    def register_url(self, url: str | None) -> None:
        """The secrets inside a URL (not the URL itself: hosts and paths stay readable); user info is
        also a basic-auth pair (HTTP clients send it as `Authorization: Basic base64(user:password)`)."""
        if url:
            pair = _userinfo(url)
            self._add(_url_parts(url), [f"{pair[0]}:{pair[1]}"] if pair and pair[1] else [])

    def register_pair(self, user: str | None, password: str | None) -> None:
        """A basic-auth pair: the password, and "user:password" (whose base64 is the header value)."""
        if password:
            self._add([password], [f"{user or ''}:{password}"])

    def _add(self, values: Iterable[str], pairs: Iterable[str] = ()) -> None:
        new = [v for v in values if v and len(v) >= MIN_SECRET and v not in self._secrets]
        new_pairs = [p for p in pairs if p not in self._pairs]
        if not new and not new_pairs:
            return
        with self._lock:
            for v in new:
                self._secrets[v] = None
            for p in new_pairs:
                self._pairs[p] = None
            all_forms: set[str] = set()
            for s in self._secrets:
                all_forms |= forms(s)
            for p in self._pairs:
                raw = p.encode("utf-8", "surrogatepass")
                b64 = [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]
                all_forms |= {*b64, *_in_url(b64)}
            self._full = sorted((f for f in all_forms if len(f) < FRAGMENT), key=len, reverse=True)
            self._long = sorted((f for f in all_forms if len(f) >= FRAGMENT), key=len, reverse=True)

    def snapshot(self) -> tuple[dict[str, None], dict[str, None]]:
        return dict(self._secrets), dict(self._pairs)

    def restore(self, snap: tuple[dict[str, None], dict[str, None]]) -> None:
        """Back to an earlier `snapshot()` (tests isolate the process-wide registry with it)."""
        with self._lock:
            self._secrets, self._pairs = {}, {}
        self._full, self._long = [], []
        self._add(list(snap[0]), list(snap[1]))

    # --------------------------------------------------------------------- masking

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of every secret, secret prefix and secret suffix in `text`, merged."""
        full, long = self._full, self._long
        found: list[tuple[int, int]] = []
        for f in full:
            i = text.find(f)
            while i >= 0:
                found.append((i, i + len(f)))
                i = text.find(f, i + 1)
        n = len(text)
        for f in long:
            head, tail, m = f[:FRAGMENT], f[-FRAGMENT:], len(f)
            i = text.find(head)
            while i >= 0:  # a prefix of f, as long as it goes on
                k = FRAGMENT
                while k < m and i + k < n and text[i + k] == f[k]:
                    k += 1
                found.append((i, i + k))
                i = text.find(head, i + 1)
            i = text.find(tail)
            while i >= 0:  # a suffix of f, as far back as it goes
                end, k = i + FRAGMENT, FRAGMENT
                while k < m and end - k - 1 >= 0 and text[end - k - 1] == f[m - k - 1]:
                    k += 1
                found.append((end - k, end))
                i = text.find(tail, i + 1)
        if not found:
            return []
        found.sort()
        merged = [found[0]]
        for s, e in found[1:]:
            if s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        return merged

    def mask(self, text: str) -> str:
        if "://" in text:
            text = _URL_PASSWORD.sub(_masked_url_password, text)
        if not text or not (self._full or self._long):
            return text
        spans = self.spans(text)
        if not spans:
            return text
        out, pos = [], 0
        for s, e in spans:
            out += [text[pos:s], MASK]
            pos = e
        out.append(text[pos:])
        return "".join(out)


REDACTOR = Redactor()
register = REDACTOR.register
register_url = REDACTOR.register_url
register_pair = REDACTOR.register_pair


def mask(text: Any) -> str:
    """`text` (any object, as str()) with every known secret, and every cut piece of one, masked."""
    return REDACTOR.mask(text if isinstance(text, str) else str(text))


def clip(text: Any, limit: int, keep_end: int = 0) -> str:
    """Masked, then cut to `limit` characters (with "…"): never cut before masking. keep_end > 0
    cuts in the middle instead and keeps the last `keep_end` characters (at most limit - 1): an
    error's end often holds what it means (an advice, a marker a reader looks for)."""
    masked = mask(text)
    if len(masked) <= limit:
        return masked
    end = min(max(0, keep_end), max(0, limit - 1))
    head = masked[: max(0, limit - 1 - end)]
    return head + "…" + (masked[len(masked) - end:] if end else "")


# ------------------------------------------------------------------------- logging


class RedactingFilter(logging.Filter):
    """Masks a log record in place: the formatted message, the extra fields, the traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = mask(message), None
        for key, value in list(vars(record).items()):
            if key in _RECORD_FIELDS or key.startswith("_"):
                continue
            try:
                setattr(record, key, mask_deep(value))
            except Exception:  # a filter must never raise into the code that logs (Handler.handle
                setattr(record, key, "***")  # does not guard it): a field that cannot be masked is hidden
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


_RECORD_FIELDS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "taskName"}


def mask_deep(value: Any) -> Any:
    """`value` masked all through: strings, the items of lists, tuples and sets, dicts' keys and
    values; any other object but a number (an exception, a URL object) as its masked str(), which
    is what a formatter would have shown of it."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [mask_deep(v) for v in value]
    if isinstance(value, dict):  # a key stays hashable: a number as it is, anything else as masked text
        return {(k if k is None or isinstance(k, int | float) else mask(_text(k))): mask_deep(v)
                for k, v in value.items()}
    if value is None or isinstance(value, int | float):
        return value
    return mask(_text(value))


def _text(value: Any) -> str:
    """str(value), or a placeholder naming its type when its __str__ fails (logging must not raise)."""
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def install_on(handler: logging.Handler) -> None:
    """Add the filter to `handler` once."""
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())


class RedactingStream:
    """A text stream that masks what is written to it (the CLI's stdout and stderr)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(mask(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
