"""Block Kit limits and validation.

`fit_blocks` trims a rendered message to Slack's limits (text lengths, element counts, 50 blocks)
so a long account name or message never makes Slack reject an alert; `validate_blocks` checks
blocks with slack_sdk's block models (the same rules Slack applies) and reports unknown fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

MAX_BLOCKS = 50
MAX_TEXT = 3000  # the fallback `text` of a message shown in notifications
HEADER_TEXT = 150
SECTION_TEXT = 3000
FIELD_TEXT = 2000
MAX_FIELDS = 10
CONTEXT_ELEMENTS = 10
ACTION_ELEMENTS = 25
BUTTON_TEXT = 75
BUTTON_VALUE = 2000
URL = 3000
OPTION_TEXT = 75
OPTION_VALUE = 150
MAX_OPTIONS = 100
PLACEHOLDER = 150
ID = 255


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def escape_mrkdwn(text: Any) -> str:
    """Escape &, < and > so user data cannot form links, mentions or broadcasts in mrkdwn."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_BROADCAST = re.compile(r"<(!(?:here|channel|everyone|subteam\^)[^<>]*)>", re.IGNORECASE)
_TAG = re.compile(r"<(?!!date\^)([^<>]*)>")


def neutralize(text: str, fallback: bool = False) -> str:
    """A last line of defence for every mrkdwn text usagebot sends (escaping user data where it is
    written is the first): usagebot never pings @here, @channel, @everyone or a user group, so any such
    command is escaped wherever it came from. The fallback `text` of a message holds no links or
    mentions of usagebot's own either (only dates): there every <...> but a date is escaped."""
    text = _BROADCAST.sub(lambda m: f"&lt;{m.group(1)}&gt;", text)
    return _TAG.sub(lambda m: f"&lt;{m.group(1)}&gt;", text) if fallback else text


def neutralize_blocks(value: Any) -> Any:
    """`neutralize` applied to every mrkdwn text object in blocks (in place; plain_text is never parsed)."""
    if isinstance(value, list):
        for v in value:
            neutralize_blocks(v)
    elif isinstance(value, dict):
        if value.get("type") == "mrkdwn" and isinstance(value.get("text"), str):
            value["text"] = neutralize(value["text"])
        for v in value.values():
            if isinstance(v, dict | list):
                neutralize_blocks(v)
    return value


def _fit_text(obj: Any, limit: int) -> None:
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        obj["text"] = truncate(obj["text"], limit)


def _fit_element(el: dict[str, Any]) -> None:
    t = el.get("type")
    if isinstance(el.get("action_id"), str):
        el["action_id"] = el["action_id"][:ID]
    if t == "button":
        _fit_text(el.get("text"), BUTTON_TEXT)
        if isinstance(el.get("value"), str):
            el["value"] = el["value"][:BUTTON_VALUE]
        if isinstance(el.get("url"), str) and len(el["url"]) > URL:
            el.pop("url")  # a cut URL would point somewhere else
    elif t in ("static_select", "overflow"):
        _fit_text(el.get("placeholder"), PLACEHOLDER)
        opts = el.get("options")
        if isinstance(opts, list):
            del opts[MAX_OPTIONS:]
            for o in opts:
                _fit_text(o.get("text"), OPTION_TEXT)
                if isinstance(o.get("value"), str):
                    o["value"] = o["value"][:OPTION_VALUE]


def fit_blocks(blocks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `blocks` trimmed to Block Kit's limits (the last kept block says what was cut)."""
    import copy

    out: list[dict[str, Any]] = copy.deepcopy([dict(b) for b in blocks])
    if len(out) > MAX_BLOCKS:
        dropped = len(out) - (MAX_BLOCKS - 1)
        out = out[: MAX_BLOCKS - 1]
        out.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"… {dropped} more block(s) not shown (Slack shows at most {MAX_BLOCKS})"}]})
    for b in out:
        if isinstance(b.get("block_id"), str):
            b["block_id"] = b["block_id"][:ID]
        t = b.get("type")
        if t == "header":
            _fit_text(b.get("text"), HEADER_TEXT)
        elif t == "section":
            _fit_text(b.get("text"), SECTION_TEXT)
            fields = b.get("fields")
            if isinstance(fields, list):
                del fields[MAX_FIELDS:]
                for f in fields:
                    _fit_text(f, FIELD_TEXT)
            if isinstance(b.get("accessory"), dict):
                _fit_element(b["accessory"])
        elif t == "context":
            els = b.get("elements")
            if isinstance(els, list):
                del els[CONTEXT_ELEMENTS:]
                for e in els:
                    _fit_text(e, FIELD_TEXT)
        elif t == "actions":
            els = b.get("elements")
            if isinstance(els, list):
                del els[ACTION_ELEMENTS:]
                for e in els:
                    if isinstance(e, dict):
                        _fit_element(e)
    return out


def _dropped_keys(given: Any, kept: Any, path: str) -> list[str]:
    """Keys present in `given` that the slack_sdk model did not keep (unknown fields)."""
    out: list[str] = []
    if isinstance(given, dict) and isinstance(kept, dict):
        for k, v in given.items():
            if k not in kept:
                out.append(f"{path}.{k}")
            else:
                out.extend(_dropped_keys(v, kept[k], f"{path}.{k}"))
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (g, k) in enumerate(zip(given, kept, strict=False)):
            out.extend(_dropped_keys(g, k, f"{path}[{i}]"))
    return out


def validate_blocks(blocks: Sequence[Mapping[str, Any]]) -> list[str]:
    """Problems Slack would reject the blocks for (empty list = valid), each naming the block."""
    problems: list[str] = []
    if len(blocks) > MAX_BLOCKS:
        problems.append(f"{len(blocks)} blocks; Slack allows at most {MAX_BLOCKS}")
    for i, b in enumerate(blocks):
        where = f"blocks[{i}] ({b.get('type', '?')})"
        if not isinstance(b, Mapping):
            problems.append(f"blocks[{i}]: must be an object")
            continue
        parsed = Block.parse(dict(b))
        if parsed is None:
            problems.append(f"{where}: unknown block type {b.get('type')!r}")
            continue
        try:
            kept = parsed.to_dict()
        except SlackObjectFormationError as exc:
            problems.append(f"{where}: {exc}")
            continue
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            problems.append(f"{where}: malformed ({type(exc).__name__}: {exc})")
            continue
        for key in _dropped_keys(dict(b), kept, f"blocks[{i}]"):
            problems.append(f"{where}: unknown field {key}")
        problems.extend(f"{where}: {p}" for p in _plain_text_only(b))
    return problems


def _plain_text_only(b: Mapping[str, Any]) -> list[str]:
    """Places where Slack accepts only plain_text (slack_sdk's models let mrkdwn through)."""
    out: list[str] = []

    def check(obj: Any, what: str) -> None:
        if isinstance(obj, Mapping) and obj.get("type") != "plain_text":
            out.append(f"{what} must be a plain_text object")

    if b.get("type") == "header":
        check(b.get("text"), "header text")
    elements = list(b.get("elements") or []) if b.get("type") == "actions" else []
    if isinstance(b.get("accessory"), Mapping):
        elements.append(b["accessory"])
    for el in elements:
        if not isinstance(el, Mapping):
            continue
        if el.get("type") == "button":
            check(el.get("text"), "button text")
        if "placeholder" in el:
            check(el.get("placeholder"), f"{el.get('type')} placeholder")
        for o in el.get("options") or []:
            if isinstance(o, Mapping):
                check(o.get("text"), f"{el.get('type')} option text")
    return out
