"""The database: SQLModel tables, Alembic migrations, bulk usage I/O, alert state, outbox.

- db:        engines (SQLite file by default, PostgreSQL by URL), migrate(), redact_url()
- models:    the tables (mirrored by migrations/versions)
- usage:     idempotent bulk upserts of usage points; aggregated MetricBlocks for the engine
- accounts:  account facts
- episodes:  alert episodes + audit events; record_step() writes a lifecycle step atomically
- outbox:    side effects queued with the state change, delivered with retries
- cursors:   where each usage source left off
"""
