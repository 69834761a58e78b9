#!/usr/bin/env bash
# Run the whole test suite: static checks (scripts/lint.sh), the same service bootstrap as
# scripts/run.sh, then every test against the real RabbitMQ and PostgreSQL, then
# schemathesis against the admin API.
set -euo pipefail
cd "$(dirname "$0")/.."
# Self-contained, fmt, clippy, cargo-deny. SUBSYNC_SKIP_LINT=1 skips them (local runs).
if [ "${SUBSYNC_SKIP_LINT:-0}" != 1 ]; then
  bash scripts/lint.sh
fi
bash scripts/services.sh
export SUBSYNC_TEST_DATABASE_URL="${SUBSYNC_TEST_DATABASE_URL:-postgres://subsync:subsync@127.0.0.1:5432/subsync}"
export SUBSYNC_TEST_AMQP_URL="${SUBSYNC_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# Databases left by earlier runs (each test creates its own).
psql "$SUBSYNC_TEST_DATABASE_URL" -qAt -c \
  "SELECT 'DROP DATABASE IF EXISTS \"' || datname || '\";' FROM pg_database WHERE datname LIKE 'subsync_test_%'" \
  | psql "$SUBSYNC_TEST_DATABASE_URL" -q >/dev/null 2>&1 || true
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
# The admin API against its own OpenAPI document (schemathesis from PyPI; its own service
# instance, database and queues). SUBSYNC_SKIP_SCHEMATHESIS=1 skips it.
if [ "${SUBSYNC_SKIP_SCHEMATHESIS:-0}" != 1 ]; then
  bash scripts/schemathesis.sh
fi
