"""Slack: Block Kit alerts from sandboxed Jinja2 templates, threads per alert episode, crash-safe and
rate-limit-aware delivery through the outbox, owner digests, and the data behind `/usage`."""
