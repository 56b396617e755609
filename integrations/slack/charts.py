"""The chart of an alert, uploaded into its Slack thread (files_upload_v2), once.

When an episode's parent message is posted, `ChartAttacher.attach` renders the episode's chart
(integrations.charts: usage against the usual level frozen when it fired, the threshold and the
quota, from zero) as a PNG and shares it in the thread. The text sparkline of the message stays as
the fallback (notifications, clients without images).

Exactly once like every post (integrations.slack.delivery): the upload is a step recorded before
the request; a step whose outcome is unknown (a crash, a lost response) is looked up in the thread
(a file with the step's name) before uploading again. A chart that cannot be made or that Slack
refuses (no files:write scope, a deleted thread) is logged and skipped: the alert itself is
delivered all the same, and a transient failure is tried again with the delivery's next attempt
only while the delivery itself is retried.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from integrations.slack.api import SlackApi
from integrations.slack.errors import PermanentSlackError
from storage import slack as store
from storage.outbox import DEFAULT_LEASE

log = logging.getLogger(__name__)

SEARCH_MARGIN = 600
SEARCH_PAGES = 5


def chart_filename(step: str) -> str:
    """The uploaded file's name: unique per step, so an upload can be found again in the thread."""
    return f"usagebot-chart-{hashlib.sha256(step.encode()).hexdigest()[:20]}.png"


class ChartAttacher:
    def __init__(self, api: SlackApi, engine: Engine, clock: Callable[[], int] = lambda: int(time.time()),
                 lease: int = DEFAULT_LEASE, render: Callable[[int, int], bytes | None] | None = None) -> None:
        """render(episode_id, now) -> PNG bytes or None; the stored episode's chart by default."""
        self.api = api
        self.engine = engine
        self.clock = clock
        self.lease = lease
        self.render = render or self._render

    def _render(self, episode_id: int, now: int) -> bytes | None:
        from integrations.charts.data import chart_of_episode
        from integrations.charts.png import render_png

        chart = chart_of_episode(self.engine, episode_id, now)
        return None if chart is None else render_png(chart)

    def attach(self, post_step: str, channel: str, thread_ts: str, episode_id: int | None,
               alert_title: str = "") -> str | None:
        """Share the episode's chart in the thread of the message posted by `post_step`; the file's
        id ("" when it was shared before a crash), or None when there is no chart or it failed."""
        if episode_id is None:
            return None
        step = f"{post_step}|chart"
        token = uuid.uuid4().hex
        try:
            rec, mine = store.claim_step(self.engine, step, channel, thread_ts, self.clock(), token, self.lease)
        except Exception:
            log.exception("chart of episode %s: could not record the upload step", episode_id)
            return None
        if (rec is not None and rec.ts is not None) or not mine:
            return None  # uploaded already, or another deliverer is uploading it
        name = chart_filename(step)
        try:
            if rec is not None and self._find(channel, thread_ts, name, rec.attempted_at):
                log.info("chart %s was uploaded before a crash or lost response; not uploading again", step)
                store.finish_step(self.engine, step, channel, "file:", self.clock())
                return ""
            png = self.render(episode_id, self.clock())
            if png is None:
                store.forget_step(self.engine, step, token)
                return None
            data = self.api.call("files.upload_v2", lambda: self.api.client.files_upload_v2(
                channel=channel, thread_ts=thread_ts, file=png, filename=name,
                title=f"Usage chart{' · ' + alert_title if alert_title else ''}",
                alt_txt="Usage against its usual level, threshold and quota, from zero"))
        except PermanentSlackError as exc:  # no files:write scope, the thread is gone: no chart, said once
            log.warning("chart of episode %s not attached: %s (add the files:write scope to the Slack app)"
                        if exc.error == "missing_scope" else "chart of episode %s not attached: %s", episode_id, exc)
            store.finish_step(self.engine, step, channel, f"failed:{exc.error}"[:60], self.clock())
            return None
        except Exception as exc:  # network, 5xx, rate limits: maybe uploaded, so looked up at the next try
            log.warning("chart of episode %s: upload failed (%s: %s); the alert is delivered without it",
                        episode_id, type(exc).__name__, exc)
            store.release_step(self.engine, step, token)
            return None
        file_id = str(((data.get("files") or [{}])[0] or {}).get("id") or "")
        store.finish_step(self.engine, step, channel, f"file:{file_id}", self.clock())
        return file_id

    def _find(self, channel: str, thread_ts: str, name: str, since: int) -> bool:
        """A file named `name` shared in the thread since `since` (minus a margin)?"""
        oldest = f"{since - SEARCH_MARGIN}.000000"
        cursor: str | None = None
        for _ in range(SEARCH_PAGES):
            data: dict[str, Any] = self.api.replies(channel, thread_ts, oldest, cursor)
            for m in data.get("messages") or []:
                if any((f or {}).get("name") == name for f in m.get("files") or []):
                    return True
            cursor = ((data.get("response_metadata") or {}).get("next_cursor")) or None
            if not cursor:
                return False
        return False
