#!/usr/bin/env bash
# One command on a fresh machine: install, then run the demo on the embedded
# default (SQLite in ./usagebot-data, synthetic book, console notifier, CRM dry run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec .venv/bin/usagebot demo "$@"
