"""What one CRM sync plans and reports: the Tasks to create (PlannedTask), the changed fields to
write (FieldWrite) and the sync's report (CrmSyncReport). bot.crm.sync plans, bot.crm.delivery carries
the plan out through the outbox; both fill the report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from integrations.salesforce.client import ApiUsage
from integrations.salesforce.diff import RecordChange
from rules.model import AccountFacts
from storage.crm import TaskCandidate, TaskRow


@dataclass(frozen=True)
class PlannedTask:
    candidate: TaskCandidate
    account: AccountFacts
    match_key: str
    kind: str
    subject: str
    description: str
    priority: str
    due_date: str
    previous: TaskRow | None

    @property
    def key(self) -> str:
        return self.candidate.key

    def line(self) -> str:
        c = self.candidate
        again = f" (again: {self.previous.status}, {self.previous.last_error or 'no error'})" if self.previous else ""
        return (f"  episode #{c.episode_id} {self.account.id} {c.rule_id} ({c.severity} {self.kind}): "
                f"{self.subject!r}, priority {self.priority}, due {self.due_date}{again}")

    def to_json(self) -> dict[str, Any]:
        return {"candidate": asdict(self.candidate), "match_key": self.match_key, "kind": self.kind,
                "subject": self.subject, "description": self.description, "priority": self.priority,
                "due_date": self.due_date}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], previous: TaskRow | None) -> PlannedTask:
        c = TaskCandidate(**d["candidate"])
        return cls(c, AccountFacts(c.account_id, c.account_id), str(d["match_key"]), str(d["kind"]),
                   str(d["subject"]), str(d["description"]), str(d["priority"]), str(d["due_date"]), previous)


@dataclass(frozen=True)
class FieldWrite:
    """One record's changed fields, as queued (a RecordChange's values)."""

    account_id: str
    match_key: str
    fields: dict[str, Any]

    def values(self) -> dict[str, Any]:
        return self.fields


@dataclass
class CrmSyncReport:
    as_of: int
    dry_run: bool
    object: str = "Account"
    accounts: int = 0
    unmatched: list[tuple[str, str]] = field(default_factory=list)  # (account id, why)
    changes: list[RecordChange] = field(default_factory=list)
    mode: str = "collections"  # or "bulk"
    write_requests: int = 0
    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (account id, error)
    parked: list[tuple[str, str]] = field(default_factory=list)  # (account id, error): not sent, see storage.crm
    parked_now: set[str] = field(default_factory=set)  # accounts of `failed` this run parked (not sent again)
    deferred: int = 0
    tasks: list[PlannedTask] = field(default_factory=list)
    tasks_created: int = 0
    tasks_failed: list[tuple[int, str]] = field(default_factory=list)  # (episode id, error)
    tasks_parked: int = 0  # Tasks not planned: refused for good before (storage.crm unpark_tasks)
    tasks_parked_now: int = 0  # of tasks_failed, those this run parked
    tasks_deferred: int = 0
    api_calls: int = 0
    api_usage: ApiUsage | None = None
    stopped: str | None = None
    run_id: int | None = None

    @property
    def unchanged(self) -> int:
        return self.accounts - len(self.unmatched) - len(self.changes)

    @property
    def ok(self) -> bool:
        return self.stopped is None and not self.failed and not self.tasks_failed
