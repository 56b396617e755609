"""Alerts per AE per day on the demo book, before and after the attention budget ([slack.attention]).

    .venv/bin/python -m bench.bench_attention                        # the demo book: 60 accounts, 6 AEs, 30 days
    .venv/bin/python -m bench.bench_attention --accounts 600 --days 30

The book is `usagebot demo`'s (integrations.sources.demo.generate_book, seed 7) with the shipped rules
(rules/examples/default.toml) and the service's default first-run policy ("digest"). Both runs replay the
same days as the service would: one evaluation cycle per day close, and the deliver and digest jobs every
hour of simulated time, through the real SlackNotifier (slack_sdk over HTTP) to FakeSlack, where each AE
is a user with a timezone (New York, Berlin, Tokyo, Los Angeles, ...). Everything is counted from what
FakeSlack received: per AE and local day, the alert DMs (an alert's first message in the AE's DM), the
digest DMs, the alerts those digests carried, and DMs posted in the AE's quiet hours.

"before": [slack] as shipped (every owner alert is a DM at once).
"after": [slack.attention] max_dms_per_day (default 3), quiet_hours "20:00-08:00", morning_digest.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from statistics import mean
from typing import Any
from zoneinfo import ZoneInfo

from bot.cli.demo import SHIPPED_RULES
from bot.service.notices import Notices
from bot.service.pipeline import deliver_outbox, run_cycle
from integrations.slack.config import AttentionConfig, DigestConfig
from integrations.slack.digest import send_due_digests
from integrations.slack.notifier import SlackNotifier
from integrations.sources.demo import generate_book
from rules.config import Secret
from rules.loader import load_rules
from rules.model import DAY
from storage.accounts import upsert_accounts
from storage.db import make_engine, migrate
from storage.usage import UPSERT_CHUNK, in_chunks, load_usage
from tests.fakes.slack_server import FakeSlack

ZONES = ("America/New_York", "Europe/Berlin", "Asia/Tokyo", "America/Los_Angeles", "Europe/London",
         "Asia/Kolkata")
HOUR = 3600


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def run(accounts: int, days: int, attention: AttentionConfig | None, workdir: Path) -> dict[str, Any]:
    book = generate_book(n_accounts=accounts, days=120, seed=7)
    ruleset = load_rules([str(SHIPPED_RULES)])
    engine = make_engine(f"sqlite:///{workdir / ('after' if attention else 'before')}.db")
    migrate(engine)
    upsert_accounts(engine, book.accounts)
    load_usage(engine, in_chunks(book.records(), UPSERT_CHUNK))
    first = book.end - days * DAY
    clock = Clock(first)
    owners = sorted({a.owner_email for a in book.accounts if a.owner_email})
    tz_of = {o: ZONES[i % len(ZONES)] for i, o in enumerate(owners)}
    with FakeSlack.running(clock=clock) as fake:
        uid_of = {}
        for i, o in enumerate(owners):
            uid_of[o] = f"U{i:08d}"
            fake.add_user(uid_of[o], o, o.split("@")[0], tz=tz_of[o])
        for n, name in enumerate(sorted({c.lstrip("#") for r in ruleset.rules for c in r.routing.channels}
                                        | {"usage-alerts"})):
            fake.add_channel(name, f"C{n:08d}")
        from integrations.slack.config import SlackConfig

        cfg = SlackConfig(bot_token=Secret("xoxb-test-token"), default_channel="#usage-alerts",
                          base_url=fake.api_url, min_post_interval=0.0, max_inline_wait=0,
                          digest=DigestConfig(hour=9, minute=0))
        if attention is not None:
            cfg = replace(cfg, attention=attention)
        notifier = SlackNotifier(cfg, engine, clock=clock)
        notices = Notices(("slack",), first_run="digest")
        for day_close in range(first + DAY, book.end + 1, DAY):
            clock.now = day_close
            run_cycle(engine, ruleset, day_close, notices=notices)
            for h in range(24):  # the deliver and digest jobs through the day
                clock.now = day_close + h * HOUR
                deliver_outbox(engine, notifier, clock.now)
                if attention is not None:
                    send_due_digests(notifier, clock.now)
        clock.now = book.end + DAY
        deliver_outbox(engine, notifier, clock.now)
        per: dict[tuple[str, str], Counter] = defaultdict(Counter)
        for owner, uid in uid_of.items():
            dm = fake.dm_with(uid)
            for msg in dm.messages if dm is not None else []:  # top-level messages: thread replies are no new DM
                local = datetime.fromtimestamp(float(msg["ts"]), UTC).astimezone(ZoneInfo(tz_of[owner]))
                day = local.strftime("%Y-%m-%d")
                text = str(msg.get("text") or "")
                if text.startswith("📬"):
                    per[(owner, day)]["digests"] += 1
                    per[(owner, day)]["digest_alerts"] += int(text.split(": ", 1)[1].split(" ", 1)[0])
                else:
                    per[(owner, day)]["alert_dms"] += 1
                if local.hour >= 20 or local.hour < 8:
                    per[(owner, day)]["quiet"] += 1
    engine.dispose()
    ae_days = len(owners) * days
    alert_dms = [per.get((o, d), Counter())["alert_dms"] for o in owners for d in _days(per, o, days)]
    busiest = max((v["alert_dms"] for v in per.values()), default=0)
    return {
        "aes": len(owners), "days": days,
        "alert_dms": sum(v["alert_dms"] for v in per.values()),
        "digests": sum(v["digests"] for v in per.values()),
        "digest_alerts": sum(v["digest_alerts"] for v in per.values()),
        "per_ae_day": sum(v["alert_dms"] for v in per.values()) / ae_days,
        "dm_messages_per_ae_day": sum(v["alert_dms"] + v["digests"] for v in per.values()) / ae_days,
        "busiest_ae_day": busiest,
        "mean_on_active_days": mean([x for x in alert_dms if x]) if any(alert_dms) else 0.0,
        "days_over_3": sum(1 for v in per.values() if v["alert_dms"] > 3),
        "quiet_hour_dms": sum(v["quiet"] for v in per.values()),
    }


def _days(per: dict[tuple[str, str], Counter], owner: str, days: int) -> list[str]:
    return sorted({d for (o, d) in per if o == owner})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=60)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--max-dms", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    after_cfg = AttentionConfig(max_dms_per_day=args.max_dms, quiet_start=20 * 60, quiet_end=8 * 60,
                                morning_digest=True)
    with tempfile.TemporaryDirectory() as d:
        before = run(args.accounts, args.days, None, Path(d))
        after = run(args.accounts, args.days, after_cfg, Path(d))
    print(f"demo book: {args.accounts} accounts, {before['aes']} AEs, {args.days} days replayed")
    print(f"{'':34}{'before':>10}{'after':>10}")
    for key, label in [("alert_dms", "alert DMs (total)"), ("per_ae_day", "alert DMs per AE per day"),
                       ("mean_on_active_days", "  on days with any"), ("busiest_ae_day", "  busiest AE-day"),
                       ("days_over_3", f"  AE-days over {args.max_dms}"), ("quiet_hour_dms", "DMs in quiet hours"),
                       ("digests", "digest DMs"), ("digest_alerts", "alerts carried by digests"),
                       ("dm_messages_per_ae_day", "all DMs per AE per day")]:
        b, a = before[key], after[key]
        fmt = (lambda x: f"{x:.2f}") if isinstance(b, float) or isinstance(a, float) else str
        print(f"{label:34}{fmt(b):>10}{fmt(a):>10}")


if __name__ == "__main__":
    main()
