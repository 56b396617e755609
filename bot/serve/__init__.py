"""The running service (`usagebot serve`): bot.serve.service.Service composes the scheduler's jobs
(bot.service), the Slack app (bot.slack), the CRM sync and pull (bot.crm) and the web UI (bot.web) in
one process. It sits above every other bot subpackage but the CLI (tests/test_layers.py)."""
