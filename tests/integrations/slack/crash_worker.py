"""Run one outbox delivery to Slack in a separate process (the crash test kills it mid-request).

    python -m tests.integrations.slack.crash_worker <db_url> <slack_api_url> <now> [<lease seconds>]
"""

from __future__ import annotations

import sys

from bot.pipeline import deliver_outbox
from integrations.slack.config import SlackConfig
from integrations.slack.notifier import SlackNotifier
from rules.config import Secret
from storage.db import make_engine


def main(db_url: str, api_url: str, now: int, lease: int = 300) -> None:
    config = SlackConfig(bot_token=Secret("xoxb-test-token"), default_channel="#usage-alerts", base_url=api_url,
                         min_post_interval=0.0, max_inline_wait=0)
    engine = make_engine(db_url)
    deliver_outbox(engine, SlackNotifier(config, engine, clock=lambda: now, lease=lease), now, lease=lease)
    print("finished", flush=True)  # never reached in the crash test


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *(int(a) for a in sys.argv[4:5]))
