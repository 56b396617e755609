#!/usr/bin/env bash
# One command on a fresh machine: install, then run the whole test suite
# (SQLite and a throwaway PostgreSQL server that the tests start themselves, and headless Chromium).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
# The PostgreSQL tests need the server binaries (initdb, pg_ctl, postgres).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL server binaries (apt-get install postgresql)..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "PostgreSQL server binaries not found: install postgresql (initdb/pg_ctl) to run the PostgreSQL tests" >&2
  fi
fi
# The browser tests drive headless Chromium through Debian's matching chromedriver (tests/browser).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing headless Chromium and its driver (apt-get install chromium chromium-driver)..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "Chromium not found: install chromium and chromium-driver to run the browser tests" >&2
  fi
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
