"""`usagebot serve`: the long-running service.

One process runs
- an HTTP server: GET /healthz (alive), GET /readyz (database reachable and
  migrated, not shutting down), GET /metrics (Prometheus), POST to the push
  ingest path ([ingest]), Slack's request URL in HTTP mode ([slack]), and the
  read-only web UI on every other GET path ([web], bot.web);
- the Slack app in Socket Mode when configured (every replica serves Slack);
- the scheduler (bot.service.scheduler): on the leader replica only, jobs that poll
  every source, evaluate rules after new data and when buckets close, check
  source freshness, deliver the outbox, send Slack digests, sync the CRM and
  prune old push-ingest ids.

Every dependency can be injected (engine, clock, notifier, leadership,
sources) so tests run the real service against local fakes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot import __version__
from bot.config.app import AppConfig
from bot.service.alerts import refusal_notices
from bot.service.evaluation import Evaluator
from bot.service.freshness import Watch, check_freshness
from bot.service.http_server import HttpLimits, HttpServer, Request, Response, Route, wsgi_route
from bot.service.leader import Leadership, make_leadership
from bot.service.metrics import Metrics, Sample
from bot.service.notices import Notices, notice_items
from bot.service.pipeline import DeliveryReport, Notifier, deliver_rows
from bot.service.polling import PollReport, poll_source
from bot.service.reload import ReloadOutcome, RuleReloader, freeze, invalid_notice
from bot.service.scheduler import JobSpec, ServiceScheduler, cron, every
from integrations.notifier import NoticeOutlet, Outlet
from integrations.notifiers import build_notifiers
from integrations.slack.template_check import template_check
from integrations.sources.base import Source, build_source
from integrations.sources.push import PushIngest, PushOutcome
from integrations.sources.refused import Refusal
from rules.config.redaction import mask
from rules.model import RuleSet
from storage.db import current_revision, head_revision, make_engine, migrate, redact_url
from storage.outbox import OutboxItem
from storage.outbox import counts as outbox_counts
from storage.sources import list_source_states, prune_events, register_source

log = logging.getLogger(__name__)
VERSION = __version__


class ServiceStartError(Exception):
    """The service cannot start for a reason the admin fixes (a port in use): said in one line."""


@dataclass
class Service:
    config: AppConfig
    engine: Engine | None = None
    clock: Callable[[], int] = lambda: int(time.time())
    notifier: Notifier | None = None  # tests: the one notifier (else every configured one is built)
    leadership: Leadership | None = None
    sources: Mapping[str, Source] | None = None
    metrics: Metrics = field(default_factory=Metrics)
    crm_client_factory: Any = None  # tests: a factory pointing simple_salesforce at a fake org

    def __post_init__(self) -> None:
        cfg = self.config
        self.engine = self.engine or make_engine(cfg.storage_url)
        self.ruleset: RuleSet = cfg.ruleset if cfg.ruleset is not None else self._load_rules()
        if self.sources is None:
            self.sources = {s.id: build_source(s) for s in cfg.sources if s.settings.enabled}
        built = [self.notifier] if self.notifier is not None else build_notifiers(
            cfg.notifiers, self.engine, cfg.slack, self.clock)
        self.notifier, self.more_notifiers = built[0], built[1:]
        self.notices = Notices(tuple(n.name for n in self.all_notifiers()), cfg.service.admin_channel,
                               cfg.evaluation.first_run, **({"pricing": cfg.pricing} if cfg.pricing else {}))
        self.evaluator = Evaluator(self.engine, self.ruleset, max_wait=cfg.scheduler.max_wait,
                                   catch_up=cfg.scheduler.catch_up, notices=self.notices)
        self.push = PushIngest(self.engine, cfg.ingest, self.clock, on_stored=self._pushed,
                               refusal_outbox=self._push_refusals) if cfg.ingest else None
        if self.leadership is None:
            self.leadership = make_leadership(cfg.scheduler.leader, self.engine, cfg.scheduler.leader_name,
                                              cfg.scheduler.lease_ttl)
        self.scheduler = ServiceScheduler(
            self.jobs(), self.leadership, self.metrics, self.clock, leader_check=cfg.scheduler.leader_check,
            misfire_grace=cfg.scheduler.misfire_grace, max_workers=cfg.scheduler.max_workers)
        self.metrics.set("usagebot_info", 1, version=VERSION, replica=self.leadership.holder)
        self.metrics.add_collector(self._collect)
        self._initialise_metrics()
        self.http: HttpServer | None = None
        self.slack_app: Any = None
        self.socket_handler: Any = None
        self._stopping = threading.Event()
        self._reload_lock = threading.Lock()
        self.reloader = self._make_reloader()
        self._first_polls = set(self.sources or {})  # sources not polled yet since start (evaluate waits)
        self._poll_failed: set[str] = set()  # sources whose last poll failed (`serve --once` says "failed")
        self._started_at = time.monotonic()
        self._scheduling = False  # the scheduler was started (health checks it from then on)
        self._head = head_revision()  # the schema version this code expects

    # ------------------------------------------------------------------ building

    def _initialise_metrics(self) -> None:
        """Create every series whose label values are known now at 0 (they exist from the first scrape)."""
        m = self.metrics
        sources = [s.id for s in self.config.sources if s.settings.enabled]
        jobs = [j.id for j in self.scheduler.jobs]
        m.initialise("usagebot_source_polls_total", [{"source": s, "result": r} for s in sources for r in ("ok", "error")])
        for name in ("usagebot_source_rows_total", "usagebot_source_rejected_total", "usagebot_source_skipped_total",
                     "usagebot_source_poll_seconds"):
            m.initialise(name, [{"source": s} for s in sources])
        m.initialise("usagebot_deliveries_total", [{"result": r} for r in ("sent", "failed", "dead", "deferred")])
        m.initialise("usagebot_job_runs_total", [{"job": j, "result": r} for j in jobs for r in ("ok", "error", "skipped")])
        m.initialise("usagebot_job_seconds", [{"job": j} for j in jobs])
        m.initialise("usagebot_errors_total", [{"component": c} for c in
                                               [*jobs, "leader", "http", "collector", "deliver", "reload"]])
        m.initialise("usagebot_evaluations_total", [{"reason": r} for r in ("bucket_closed", "late_data")])
        m.initialise("usagebot_evaluation_seconds", [{"reason": r} for r in ("bucket_closed", "late_data")])
        self._initialise_rule_metrics()
        if self.push is not None:
            m.initialise("usagebot_ingest_events_total", [{"result": r} for r in ("accepted", "duplicate")])
            m.initialise("usagebot_ingest_requests_total", [{"status": s} for s in (200, 400, 401, 413)])

    def _initialise_rule_metrics(self) -> None:
        self.metrics.initialise("usagebot_alerts_total", [{"rule": r.id, "event": e} for r in self.ruleset.rules
                                                          for e in ("fired", "renotified", "resolved")])
        self.metrics.set("usagebot_rules_loaded", len(self.ruleset.rules))

    def _load_rules(self) -> RuleSet:
        from rules.loader import load_rules

        return load_rules(list(self.config.rule_paths))

    def _make_reloader(self) -> RuleReloader | None:
        """Watches the rule files and templates (not when the rules were handed in, e.g. by tests)."""
        if self.config.ruleset is None and not self.config.rule_paths:
            return None
        slack = self.config.slack
        template_dir = getattr(slack, "template_dir", None) if slack is not None else None
        check = (lambda: template_check(slack)) if template_dir else None  # rendered fresh from disk
        for env in self._template_envs():
            freeze(env)  # running templates change only through a checked reload
        return RuleReloader(list(self.config.rule_paths), template_dir, check)

    def all_notifiers(self) -> list[Notifier]:
        """Every notifier of the service (each delivers its own outbox rows)."""
        return [self.notifier, *self.more_notifiers]  # type: ignore[list-item]

    def _template_envs(self) -> list[Any]:
        envs = []
        for n in self.all_notifiers():
            renderer = getattr(n, "renderer", None)
            if renderer is not None:  # the Slack notifier
                envs.append(renderer.env)
            if hasattr(n, "env"):  # the console notifier
                envs.append(n.env)
        return envs

    def reload(self, force: bool = False) -> ReloadOutcome | None:
        """Take changed rule files / templates if they are valid; else keep the running ones and say why."""
        if self.reloader is None:
            return None
        with self._reload_lock:
            outcome = self.reloader.check(force=force)
            if not outcome.changed:
                return outcome
            if not outcome.ok:
                self._refuse_reload(outcome)
                return outcome
            assert outcome.ruleset is not None
            before = len(self.ruleset.rules)
            self.ruleset = outcome.ruleset
            self.evaluator.ruleset = outcome.ruleset
            self._swap_templates()
            self._initialise_rule_metrics()
            self.metrics.inc("usagebot_rules_reloads_total", result="ok")
            log.info("reloaded the rules and templates: %d rule(s) in force (was %d)", len(self.ruleset.rules),
                     before, extra={"event": "rules_reloaded", "rules": [r.id for r in self.ruleset.rules]})
            return outcome

    def _refuse_reload(self, outcome: ReloadOutcome) -> None:
        for p in outcome.problems:
            log.warning("rule reload: %s", p, extra={"event": "rules_invalid"})
        log.error("a change to the rule files or templates was not loaded (%d problem(s)); the running %d rule(s) "
                  "and templates stay in force", len(outcome.problems), len(self.ruleset.rules),
                  extra={"event": "reload_refused", "problems": len(outcome.problems)})
        self.metrics.inc("usagebot_rules_reloads_total", result="invalid")
        self.metrics.inc("usagebot_errors_total", component="reload")
        from storage.outbox import enqueue

        now = self.clock()
        try:
            enqueue(self.engine, invalid_notice(outcome.problems, outcome.fingerprint, now,  # type: ignore[arg-type]
                                                self.config.service.admin_channel, len(self.ruleset.rules),
                                                self.notices.notifiers), now)
        except Exception:  # the database is down: the log lines above still say it
            log.exception("cannot queue the admin notice about the refused reload")

    def _swap_templates(self) -> None:
        """New template environments, loaded whole, for the notifiers in use (the old ones keep rendering
        until this point, so a message is never rendered half old, half new)."""
        template_dir = getattr(self.config.slack, "template_dir", None) if self.config.slack is not None else None
        for n in self.all_notifiers():
            renderer = getattr(n, "renderer", None)
            if renderer is not None:
                from integrations.slack.render import make_environment as slack_environment

                renderer.env = freeze(slack_environment(template_dir))
            if hasattr(n, "env"):
                from integrations.console import make_environment as console_environment

                n.env = freeze(console_environment(template_dir))

    def _reload_tick(self) -> None:
        try:
            self.reload()
        except Exception:  # never let the watcher die
            log.exception("checking the rule files for changes failed")
            self.metrics.inc("usagebot_errors_total", component="reload")

    def _slack_notifier(self) -> Any:
        from integrations.slack.notifier import SlackNotifier

        return next((n for n in self.all_notifiers() if isinstance(n, SlackNotifier)), None)

    def outlets(self) -> list[Outlet]:
        """What the deliver job carries out: each notifier's notices, Slack message updates (and, see
        `_retry_crm`, CRM writes that failed in a sync)."""
        out: list[Outlet] = [NoticeOutlet(n) for n in self.all_notifiers()]
        slack = self._slack_notifier()
        if slack is not None:
            from integrations.slack.assign import SlackAssignments
            from integrations.slack.updates import SlackUpdates

            out += [SlackUpdates(slack), SlackAssignments(slack)]
        return out

    def watches(self) -> list[Watch]:
        out = [Watch(s.id, s.settings.stale_after) for s in self.config.sources if s.settings.enabled]
        ingest = self.config.ingest
        if ingest is not None and ingest.stale_after:
            out.append(Watch(ingest.source_id, ingest.stale_after))
        return out

    def jobs(self) -> list[JobSpec]:
        cfg, sch = self.config, self.config.scheduler
        jobs: list[JobSpec] = []
        for s in cfg.sources:
            if not s.settings.enabled:
                continue
            trigger = cron(s.settings.cron) if s.settings.cron else every(s.settings.every or 300)
            jobs.append(JobSpec(f"poll:{s.id}", self._poll_job(s.id), trigger, run_at_start=True))
        jobs.append(JobSpec("freshness", self.freshness_job, every(sch.freshness_every), run_at_start=True))
        jobs.append(JobSpec("evaluate", self.evaluate_job, every(sch.evaluate_every), run_at_start=True))
        jobs.append(JobSpec("deliver", self.deliver_job, every(sch.deliver_every), run_at_start=True))
        slack = cfg.slack
        if slack is not None and getattr(slack, "enabled", False) and (slack.digest.enabled or slack.attention.active):
            jobs.append(JobSpec("digest", self.digest_job, every(sch.digest_every)))  # overflow, morning digests
        if slack is not None and getattr(slack, "enabled", False) and slack.attention.escalate_after:
            jobs.append(JobSpec("escalate", self.escalate_job, every(300)))
        sf = cfg.salesforce
        if sf is not None and getattr(sf, "can_connect", False):
            trigger = cron(sch.crm_sync_cron) if sch.crm_sync_cron else every(sch.crm_sync_every or 3600)
            jobs.append(JobSpec("crm_sync", self.crm_job, trigger))
            if sf.accounts is not None and sf.accounts.every:  # [salesforce.accounts] every: pull account facts
                jobs.append(JobSpec("crm_pull", self.crm_pull_job, every(sf.accounts.every), run_at_start=True))
        if cfg.ingest is not None:
            jobs.append(JobSpec("prune", self.prune_job, every(sch.prune_every)))
        return jobs

    # ------------------------------------------------------------------ jobs

    CATCH_UP_SECONDS = 3600  # the longest `serve --once` goes on polling a source that is behind
    CATCH_UP_GAP = 1  # seconds between the polls of a source that is behind, in the running service

    def _poll_job(self, source_id: str) -> Callable[[int], PollReport]:
        """Poll the source. One that reports itself behind (it read a shorter window: too many pages or
        too much time for the whole) is polled again at once: in the running service by moving its job's
        next run CATCH_UP_GAP seconds ahead, so the scheduler's workers, which evaluation, delivery and
        the leader check share, are never held by a catch-up (a loop inside the job held one for up to an
        hour, and four sources behind at once stopped delivery and the leader check); in `serve --once`
        (no running scheduler) by polling again here, for at most its `every` (a cron source: 5 minutes;
        at most CATCH_UP_SECONDS)."""
        settings = next(s.settings for s in self.config.sources if s.id == source_id)
        budget = min(settings.every or 300, self.CATCH_UP_SECONDS)

        def job(now: int) -> PollReport:
            assert self.sources is not None
            source = self.sources[source_id]
            report = self.poll(source, now)
            if self.scheduler.scheduler.running:
                if report.behind:
                    self._run_now(f"poll:{source_id}", after=self.CATCH_UP_GAP)
                return report
            ends = time.monotonic() + budget
            while report.behind and time.monotonic() < ends and not self._stopping.is_set():
                report = self.poll(source, self.clock())
            return report

        return job

    def poll(self, source: Source, now: int) -> PollReport:
        report = poll_source(self.engine, source, now, self.config.service.admin_channel,  # type: ignore[arg-type]
                             notifiers=self.notices.notifiers)
        m = self.metrics
        m.inc("usagebot_source_polls_total", source=source.id, result="ok" if report.ok else "error")
        m.observe("usagebot_source_poll_seconds", report.seconds, source=source.id)
        if report.rows:
            m.inc("usagebot_source_rows_total", report.rows, source=source.id)
        if report.rejections:
            m.inc("usagebot_source_rejected_total", report.rejections, source=source.id)
        if report.skipped:
            m.inc("usagebot_source_skipped_total", report.skipped, source=source.id)
        if not report.ok:
            m.inc("usagebot_errors_total", component=f"poll:{source.id}")
            self._poll_failed.add(source.id)
        else:
            self._poll_failed.discard(source.id)
        log.info("polled %s: %s, %d row(s), %d point(s) changed, %d malformed item(s) skipped%s", source.id,
                 "ok" if report.ok else "failed", report.rows, report.points_written, report.skipped,
                 f"; {report.behind.removeprefix(f'source {source.id!r}: ')}" if report.behind else "",
                 extra={"event": "poll", "source": source.id, "ok": report.ok, "rows": report.rows,
                        "skipped": report.skipped, "behind": report.behind is not None,
                        "changed_series": len(report.changed), "seconds": round(report.seconds, 3)})
        if report.settling:
            self._poll_again(source.id, report.settling)
        if source.id in self._first_polls:
            self._first_polls.discard(source.id)
            if not self._first_polls:
                self._run_now("evaluate")
        return report

    def _run_now(self, job_id: str, after: float = 0) -> None:
        """Run a scheduled job now (or `after` seconds from now) instead of at its next time (no-op when
        the scheduler is not running). Called from the job itself, `after` > 0 lets the running instance
        end first (a job with max_instances = 1 due while it still runs is skipped)."""
        from datetime import UTC, datetime, timedelta

        job = self.scheduler.scheduler.get_job(job_id) if self.scheduler.scheduler.running else None
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC) + timedelta(seconds=after))

    def _poll_again(self, source_id: str, settling: list[tuple[str, int]]) -> None:
        """Files younger than the source's min_age were left for later: say so, and poll again when they are old enough."""
        from datetime import UTC, datetime

        ready = max(at for _, at in settling)
        names = ", ".join(name for name, _ in settling[:5]) + (f" and {len(settling) - 5} more" if len(settling) > 5 else "")
        job = self.scheduler.scheduler.get_job(f"poll:{source_id}") if self.scheduler.scheduler.running else None
        when = datetime.fromtimestamp(ready, UTC)
        if job is not None and (job.next_run_time is None or job.next_run_time > when):
            job.modify(next_run_time=when)
            later = f"polling again at {when:%H:%M:%S} UTC"
        else:
            later = "they are read by the next poll"
        log.info("%s: %d file(s) modified less than min_age ago, left until they are complete (%s): %s", source_id,
                 len(settling), later, names, extra={"event": "poll_settling", "source": source_id,
                                                     "files": [n for n, _ in settling]})

    def freshness_job(self, now: int) -> Any:
        if self.config.service.admin_channel:  # the weekly admin summary, once a week (bot.service.weekly_summary)
            self.weekly_summary_job(now)
        return check_freshness(self.engine, self.watches(), now, self.config.service.admin_channel,  # type: ignore[arg-type]
                               notifiers=self.notices.notifiers)

    FIRST_POLL_WAIT = 300  # seconds: the longest the first evaluation waits for the sources' first polls

    def evaluate_job(self, now: int) -> Any:
        waiting = sorted(self._first_polls)
        if waiting and time.monotonic() - self._started_at < self.FIRST_POLL_WAIT:
            # At start-up every job runs at once: evaluating before the sources' first polls would decide
            # the latest closed bucket on old data and mark it done. The first poll triggers evaluation.
            log.info("evaluation waits for the first poll of %s", ", ".join(waiting),
                     extra={"event": "evaluation_waiting", "sources": waiting})
            return None
        report = self.evaluator.tick(now)
        for ev in report.evaluations:
            reason = ev.reason.replace(" ", "_")
            self.metrics.inc("usagebot_evaluations_total", reason=reason)
            self.metrics.observe("usagebot_evaluation_seconds", ev.seconds, reason=reason)
            for a in ev.report.alerts:
                self.metrics.inc("usagebot_alerts_total", rule=a.rule, event=a.event)
        if any(e.report.outbox_items for e in report.evaluations):
            self._run_now("deliver")  # new notifications go out now, not at the next deliver_every
        return report

    def deliver_job(self, now: int) -> Any:
        report = DeliveryReport()
        holder = self.leadership.holder if self.leadership else None
        for outlet in self.outlets():
            report.add(deliver_rows(self.engine, outlet, now, holder=holder))  # type: ignore[arg-type]
        crm = self._retry_crm(now, holder)
        if crm is not None:
            report.add(crm)
        m = self.metrics
        for result in ("sent", "dead", "deferred", "lost"):
            n = getattr(report, result, 0)
            if n:
                m.inc("usagebot_deliveries_total", n, result=result)
        failed = report.failed - getattr(report, "dead", 0) - getattr(report, "deferred", 0)
        if failed:
            m.inc("usagebot_deliveries_total", failed, result="failed")
            m.inc("usagebot_errors_total", failed, component="deliver")
        return report

    def _retry_crm(self, now: int, holder: str | None) -> DeliveryReport | None:
        """CRM writes that failed in a sync, retried between syncs (bot.crm.delivery; skipped while a sync runs)."""
        sf = self.config.salesforce
        if sf is None or not getattr(sf, "can_connect", False):
            return None
        from bot.crm.delivery import retry_crm_rows
        from bot.crm.sync import CrmSyncReport
        from integrations.salesforce.client import SalesforceClient

        client: list[Any] = []

        def connect() -> Any:  # only when a row is due
            if not client:
                client.append((self.crm_client_factory or SalesforceClient)(sf))
            return client[0]

        crm = CrmSyncReport(as_of=now, dry_run=False, object=sf.object)
        report = retry_crm_rows(self.engine, sf, connect, crm, now, holder)  # type: ignore[arg-type]
        if report is not None and (report.sent or report.failed):
            log.info("CRM rows retried: %d sent, %d not sent (%d written, %d task(s) created)%s", report.sent,
                     report.failed, crm.written, crm.tasks_created, f"; stopped: {crm.stopped}" if crm.stopped else "",
                     extra={"event": "crm_retried", "sent": report.sent, "failed": report.failed})
        return report

    def digest_job(self, now: int) -> Any:
        from integrations.slack.digest import send_due_digests

        slack = self._slack_notifier()
        if slack is not None:
            report = send_due_digests(slack, now)
            if report.errors:
                self.metrics.inc("usagebot_errors_total", len(report.errors), component="digest")
            return report
        return None

    def escalate_job(self, now: int) -> int:
        """Unacknowledged alerts due for escalation, queued once each (the deliver job sends them)."""
        from integrations.slack.assign import queue_escalations

        return queue_escalations(self.engine, self.config.slack.attention, now)  # type: ignore[union-attr,arg-type]

    def weekly_summary_job(self, now: int) -> int:
        """Last week's admin summary, queued once (an indexed look-up of its key on every later call)."""
        from bot.service.weekly_summary import queue_weekly_summary, summary_key, week_start
        from storage.slack import outbox_row_payload

        if outbox_row_payload(self.engine, summary_key(week_start(now))) is not None:  # type: ignore[arg-type]
            return 0
        return queue_weekly_summary(self.engine, now, self.config.service.admin_channel,  # type: ignore[arg-type]
                                    self.notices.notifiers)

    def crm_job(self, now: int) -> Any:
        from bot.crm.sync import run_crm_sync
        from rules.health import DEFAULT_MODEL

        report = run_crm_sync(self.engine, self.ruleset, self.config.salesforce, self.config.health or DEFAULT_MODEL,  # type: ignore[arg-type]
                              now, dry_run=False, client_factory=self.crm_client_factory)
        if report.stopped:
            self.metrics.inc("usagebot_errors_total", component="crm_sync")
            log.warning("CRM sync stopped early: %s", report.stopped, extra={"event": "crm_sync_stopped"})
        return report

    def crm_pull_job(self, now: int) -> Any:
        """Account facts from Salesforce (bot.crm.pull): the next alerts route to the owners it read."""
        from bot.crm.pull import run_crm_pull
        from integrations.salesforce.client import SalesforceClient

        sf = self.config.salesforce
        report = run_crm_pull(self.engine, sf, now, False, (self.crm_client_factory or SalesforceClient)(sf))
        if report.stopped:
            self.metrics.inc("usagebot_errors_total", component="crm_pull")
            log.warning("Salesforce accounts pull stopped, nothing stored: %s", report.stopped,
                        extra={"event": "crm_pull_stopped"})
        else:
            log.info("Salesforce accounts pull: %d record(s) read, %d account(s) changed, %d API call(s)",
                     report.records, len(report.changed), report.api_calls,
                     extra={"event": "crm_pulled", "changed": len(report.changed)})
        return report

    def prune_job(self, now: int) -> int:
        assert self.config.ingest is not None
        return prune_events(self.engine, now - self.config.ingest.max_age)  # type: ignore[arg-type]

    def _pushed(self, outcome: PushOutcome) -> None:
        self.metrics.inc("usagebot_ingest_events_total", outcome.accepted, result="accepted")
        if outcome.duplicates:
            self.metrics.inc("usagebot_ingest_events_total", outcome.duplicates, result="duplicate")
        if outcome.refused and self.config.ingest is not None:
            self.metrics.inc("usagebot_source_rejected_total", outcome.refused, source=self.config.ingest.source_id)

    def _push_refusals(self, part: str, refusals: list[Refusal], now: int) -> list[OutboxItem]:
        """The admin notices about buckets a pushed request was refused (one per bucket and notifier)."""
        assert self.config.ingest is not None
        notices = refusal_notices(self.config.ingest.source_id, part, refusals, now, self.config.service.admin_channel)
        return [item for n in notices for item in notice_items(n, now, self.notices.notifiers)]

    # ------------------------------------------------------------------ HTTP

    def _collect(self) -> list[Sample]:
        now = self.clock()
        out: list[Sample] = []
        for s in list_source_states(self.engine):  # type: ignore[arg-type]
            if s.last_success_at is not None:
                out.append(Sample("usagebot_source_poll_lag_seconds", now - s.last_success_at, {"source": s.source_id}))
            ref = s.last_new_data_at if s.last_new_data_at is not None else s.registered_at
            if ref is not None:
                out.append(Sample("usagebot_source_data_age_seconds", now - ref, {"source": s.source_id}))
            out.append(Sample("usagebot_source_stale", 1 if s.stale_since is not None else 0, {"source": s.source_id}))
        for status, n in outbox_counts(self.engine).items():  # type: ignore[arg-type]
            out.append(Sample("usagebot_outbox_rows", n, {"status": status}))
        out.extend(self._crm_samples())
        if self.http is not None:
            out.append(Sample("usagebot_http_connections", self.http.open_connections, {}))
        return out

    def _crm_samples(self) -> list[Sample]:
        """The parked CRM records and Tasks (storage.crm), when Salesforce is configured."""
        from storage.crm import count_parked_records, count_parked_tasks

        sf = self.config.salesforce
        if sf is None:
            return []
        return [Sample("usagebot_crm_parked_records", count_parked_records(self.engine, sf.object), {}),  # type: ignore[arg-type]
                Sample("usagebot_crm_parked_tasks", count_parked_tasks(self.engine), {})]  # type: ignore[arg-type]

    def healthz(self, req: Request) -> Response:
        alive = not self._scheduling or self.scheduler.scheduler.running or self._stopping.is_set()
        return Response.json(200 if alive else 503, {"status": "ok" if alive else "scheduler stopped"})

    def readiness(self) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        try:
            with self.engine.connect() as conn:  # type: ignore[union-attr]
                conn.execute(sa.text("SELECT 1"))
            checks["database"] = "ok"
            rev, head = current_revision(self.engine), self._head  # type: ignore[arg-type]
            checks["migrations"] = "ok" if rev == head else f"at {rev}, expected {head}"
        except Exception as exc:
            checks["database"] = mask(redact_url(f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0]}"))
        checks["shutdown"] = "shutting down" if self._stopping.is_set() else "ok"
        checks["scheduler"] = "ok" if (not self._scheduling or self.scheduler.scheduler.running) else "stopped"
        return all(v == "ok" for v in checks.values()), checks

    def readyz(self, req: Request) -> Response:
        ok, checks = self.readiness()
        return Response.json(200 if ok else 503, {"ready": ok, "checks": checks,
                                                  "leader": self.scheduler.is_leader,
                                                  "replica": self.leadership.holder})  # type: ignore[union-attr]

    def metrics_endpoint(self, req: Request) -> Response:
        body, content_type = self.metrics.render(req.headers.get("accept"))
        return Response(200, body, {"Content-Type": content_type})

    def ingest_authorize(self, headers: Mapping[str, str]) -> Response | None:
        """Checked on the headers, before the body is read: the shared secret."""
        assert self.push is not None
        if self.push.authorized(headers):
            return None
        self.metrics.inc("usagebot_ingest_requests_total", status=401)
        return Response(401, Response.json(401, {"error": "missing or wrong shared secret: send "
                                                          "'Authorization: Bearer <secret>'"}).body,
                        {"Content-Type": "application/json", "WWW-Authenticate": 'Bearer realm="usagebot ingest"'})

    def ingest_endpoint(self, req: Request) -> Response:
        assert self.push is not None
        status, body = self.push.handle(req.headers, req.body)
        self.metrics.inc("usagebot_ingest_requests_total", status=status)
        if status >= 400 and status != 401:
            log.info("push ingest refused (%d): %s", status, body.get("error"),
                     extra={"event": "ingest_refused", "status": status})
        resp = Response.json(status, body)
        if status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="usagebot ingest"'
        return resp

    def routes(self) -> list[Route]:
        """The HTTP routes, each with its body limit and the check made before its body is read."""
        r = [Route("GET", "/healthz", self.healthz, "healthz"), Route("GET", "/readyz", self.readyz, "readyz"),
             Route("GET", "/metrics", self.metrics_endpoint, "metrics")]
        if self.push is not None:
            r.append(Route("POST", self.push.config.path, self.ingest_endpoint, "ingest",
                           max_body=min(self.push.config.max_body_bytes, self.config.service.max_body_bytes),
                           authorize=self.ingest_authorize))
        slack = self.config.slack
        if slack is not None and getattr(slack, "interactive_mode", None) == "http":
            from bot.slack.app import http_handler, slack_signature_headers

            r.append(Route("POST", slack.http_path, wsgi_route(http_handler(self._slack_app(), slack)), "slack",
                           max_body=self.config.service.max_body_bytes, authorize=slack_signature_headers))
        web = self.config.web
        if web is not None and web.enabled:  # the read-only web UI (bot.web): every other GET path
            from bot.web.app import WebUI

            r.extend(WebUI(web, self.engine, lambda: self.ruleset, self.clock, slack).routes())  # type: ignore[arg-type]
        return r

    def _slack_app(self) -> Any:
        if self.slack_app is None:
            from bot.slack.app import build_slack_app
            from rules.health import DEFAULT_MODEL

            sf = self.config.salesforce
            tasks = None
            if sf is not None and getattr(sf, "can_connect", False):  # the "Log task" button
                from bot.crm.task_button import TaskButton

                tasks = TaskButton(self.engine, sf, self.clock, self.crm_client_factory)  # type: ignore[arg-type]
            self.slack_app = build_slack_app(self.config.slack, self.engine, self.clock,  # type: ignore[arg-type]
                                             notifier=self._slack_notifier(),
                                             health_model=self.config.health or DEFAULT_MODEL, tasks=tasks)
        return self.slack_app

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        """Migrate the database (serialised across replicas) and register the sources."""
        migrate(self.engine)  # type: ignore[arg-type]
        now = self.clock()
        for s in self.config.sources:
            if s.settings.enabled:
                register_source(self.engine, s.id, "poll", now)  # type: ignore[arg-type]
        if self.config.ingest is not None:
            register_source(self.engine, self.config.ingest.source_id, "push", now)  # type: ignore[arg-type]

    def start(self, http: bool = True, scheduler: bool = True) -> None:
        self.prepare()
        if http:
            svc = self.config.service
            limits = HttpLimits(max_connections=svc.max_connections, read_timeout=svc.read_timeout,
                                idle_timeout=svc.idle_timeout, threads=svc.http_threads)
            try:  # the server binds when it is built
                self.http = HttpServer(svc.host, svc.port, self.routes(), limits, metrics=self.metrics,
                                       on_error=lambda: self.metrics.inc("usagebot_errors_total", component="http"))
                self.http.start()
            except OSError as exc:  # ListenError: the port is taken, or the address is not this host's
                raise ServiceStartError(
                    f"{exc}; stop what uses the port, or choose another with --port / $USAGEBOT_PORT / [service] "
                    "port (and the address with --host / [service] host)") from None
            log.info("listening on %s:%d", svc.host, self.http.port, extra={"event": "listening", "port": self.http.port})
        slack = self.config.slack
        if slack is not None and getattr(slack, "interactive_mode", None) == "socket":
            from bot.slack.app import run_socket_mode

            self.socket_handler = run_socket_mode(self._slack_app(), slack, block=False)
        if scheduler:
            if self.reloader is not None:  # every replica: a follower that becomes leader has the new rules
                self.scheduler.scheduler.add_job(self._reload_tick, every(self.config.scheduler.reload_every),
                                                 id="reload", name="rule reload")
            self.scheduler.start()
            self._scheduling = True
        log.info("usagebot %s started: %d source(s), %d rule(s), database %s", VERSION, len(self.sources or {}),
                 len(self.ruleset.rules), redact_url(self.engine.url),  # type: ignore[union-attr]
                 extra={"event": "started", "replica": self.leadership.holder})  # type: ignore[union-attr]

    def stop(self) -> None:
        """Graceful shutdown: not ready any more, finish running jobs, give up leadership, close."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("shutting down", extra={"event": "stopping"})
        waiter = threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": True}, daemon=True)
        waiter.start()
        waiter.join(self.config.service.shutdown_timeout)
        if waiter.is_alive():  # a job outlived shutdown_timeout: give up leadership anyway and exit
            log.warning("jobs still running after shutdown_timeout (%ss); stopping without them",
                        self.config.service.shutdown_timeout, extra={"event": "shutdown_timeout"})
            self.leadership.release()  # type: ignore[union-attr]
        if self.socket_handler is not None:
            try:
                self.socket_handler.close()
            except Exception:
                log.exception("closing the Slack Socket Mode connection failed")
        if self.http is not None:
            self.http.stop()
        for s in (self.sources or {}).values():
            s.close()
        for n in self.all_notifiers():
            close = getattr(n, "close", None)
            if close is not None:  # the webhook notifier's HTTP client
                close()
        self.engine.dispose()  # type: ignore[union-attr]
        log.info("stopped", extra={"event": "stopped"})

    def run_once(self) -> dict[str, str]:
        """Every job once, in order (poll, freshness, evaluate, deliver, ...), as the leader would: each
        job's "ok", "error" (it raised) or "skipped", and "failed" for a poll job whose source failed (the
        job ran and recorded the failure, as the running service does, but a cron run of `serve --once`
        must say so in its exit status)."""
        self.prepare()
        results = self.scheduler.run_all_once()
        for source_id in self._poll_failed:
            if results.get(f"poll:{source_id}") == "ok":
                results[f"poll:{source_id}"] = "failed"
        return results

    def serve_forever(self, install_signals: bool = True) -> None:
        """start(), then block until SIGTERM / SIGINT (or stop()), then stop(); SIGHUP reloads the rules."""
        done, hup = threading.Event(), threading.Event()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: done.set())
            if hasattr(signal, "SIGHUP"):
                signal.signal(signal.SIGHUP, lambda *_: hup.set())  # reload the rules and templates now
        self.start()
        try:
            while not done.wait(0.5) and not self._stopping.is_set():
                if hup.is_set():
                    hup.clear()
                    log.info("SIGHUP: checking the rule files and templates", extra={"event": "sighup"})
                    self._reload_tick()
        finally:
            self.stop()
