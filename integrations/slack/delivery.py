"""Exactly-once posting to Slack across crashes, lost responses and retries.

Every post is a *step* with a stable key (outbox idempotency key + destination). Before the
request the step is recorded (committed) without a ts; after Slack answers, its ts is stored.
A retry of a finished step does nothing. A step that was sent but never confirmed (the process
died, or the response was lost) is looked up in the channel or thread first: each post carries
message metadata {"event_type": "usagebot_delivery", "event_payload": {"step": key}}, which
conversations.history / conversations.replies return; only when no such message exists is it
posted again. So a crash at any point neither loses nor duplicates a message.

Two deliverers never post one step at once: the step is claimed first (a fenced lease on the
database clock, storage.slack.claim_step); while another live deliverer holds it, the post waits
(RetryLater) instead of racing it. This covers every post, whoever makes it (outbox rows, digests).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from integrations.slack.api import SlackApi
from integrations.slack.blocks import truncate
from integrations.slack.errors import PermanentSlackError, RetryLater, SlackDeliveryError, SlackUnavailable
from integrations.slack.render import SlackMessageContent
from storage import slack as store
from storage.outbox import DEFAULT_LEASE

log = logging.getLogger(__name__)

METADATA_EVENT = "usagebot_delivery"
SEARCH_MARGIN = 600  # seconds before the first attempt searched (clock skew between us and Slack)
SEARCH_PAGES = 10
BLOCK_ERRORS = ("invalid_blocks", "invalid_blocks_format", "msg_too_long")


class Poster:
    def __init__(self, api: SlackApi, engine: Engine, clock: Callable[[], int] = lambda: int(time.time()),
                 lease: int = DEFAULT_LEASE) -> None:
        self.api = api
        self.engine = engine
        self.clock = clock
        self.lease = lease  # how long a claimed step is ours (it must outlast one post with its retries)

    def post_once(self, step: str, channel: str, thread_ts: str | None,
                  content: SlackMessageContent) -> tuple[str, str]:
        """Post `content` unless step `step` was posted already; returns (channel id, ts).

        Raises RetryLater while another deliverer holds the step.
        """
        token = uuid.uuid4().hex
        rec, mine = store.claim_step(self.engine, step, channel, thread_ts, self.clock(), token, self.lease)
        if rec is not None and rec.ts is not None:
            return rec.channel, rec.ts
        if not mine:
            raise RetryLater(f"delivery step {step} is being posted by another deliverer", 30)
        if rec is not None:
            try:
                found = self.find_posted(rec.channel, rec.thread_ts, step, rec.attempted_at)
            except Exception:
                store.release_step(self.engine, step, token)
                raise
            if found is not None:
                log.info("delivery step %s was posted before a crash or lost response; not posting again", step)
                store.finish_step(self.engine, step, rec.channel, found, self.clock())
                return rec.channel, found
        metadata = {"event_type": METADATA_EVENT, "event_payload": {"step": step}}
        try:
            try:
                data = self.api.post_message(channel, content.text, content.blocks, thread_ts, metadata)
            except PermanentSlackError as exc:
                if exc.error not in BLOCK_ERRORS:
                    raise
                log.error("Slack rejected the blocks of %s (%s); posting the text only", step, exc)
                data = self.api.post_message(channel, truncate(content.text, 3000), None, thread_ts, metadata)
        except SlackDeliveryError as exc:
            if rec is None and not isinstance(exc, SlackUnavailable):
                # Slack answered with an error code (it did not post) and no earlier attempt is unaccounted for
                store.forget_step(self.engine, step, token)
            else:
                store.release_step(self.engine, step, token)
            raise
        except BaseException:  # anything else (an error of ours or the HTTP stack's): the outcome is unknown,
            store.release_step(self.engine, step, token)  # so it is looked up before the next try
            raise
        cid, ts = str(data.get("channel") or channel), str(data["ts"])
        store.finish_step(self.engine, step, cid, ts, self.clock())
        return cid, ts

    def find_posted(self, channel: str, thread_ts: str | None, step: str, since: int) -> str | None:
        """The ts of a message carrying this step's metadata, posted since `since` (minus a margin).

        None also when Slack no longer knows `channel` (channel_not_found: a stale DM id): nothing
        can be posted there, so the caller posts to the channel it has now."""
        oldest = f"{since - SEARCH_MARGIN}.000000"
        cursor: str | None = None
        for _ in range(SEARCH_PAGES):
            try:
                data = self._read(channel, thread_ts, oldest, cursor)
            except PermanentSlackError as exc:
                if exc.error != "channel_not_found":
                    raise
                log.warning("delivery step %s: channel %s of its earlier attempt is not found; not posted there",
                            step, channel)
                return None
            for m in data.get("messages") or []:
                if _step_of(m) == step:
                    return str(m["ts"])
            cursor = ((data.get("response_metadata") or {}).get("next_cursor")) or None
            if not cursor:
                return None
        log.warning("delivery step %s: not found in the last %d pages of %s; posting it again",
                    step, SEARCH_PAGES, channel)
        return None

    def _read(self, channel: str, thread_ts: str | None, oldest: str, cursor: str | None) -> dict[str, Any]:
        """One page of the thread (replies) or the channel (history)."""
        if thread_ts:
            return self.api.replies(channel, thread_ts, oldest, cursor)
        return self.api.history(channel, oldest, cursor)


def _step_of(message: dict[str, Any]) -> str | None:
    md = message.get("metadata") or {}
    if md.get("event_type") != METADATA_EVENT:
        return None
    payload = md.get("event_payload") or {}
    step = payload.get("step")
    return str(step) if step is not None else None
