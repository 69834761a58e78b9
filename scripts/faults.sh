#!/usr/bin/env bash
# The fault-injection suite (tests/faults.rs): kill -9, RabbitMQ and PostgreSQL restarts,
# a 30 s broker link cut, workers and schedulers killed mid-flight, poison and malformed
# input, 10,000 hostile connections (slow heads, idle keep-alive), each against >= 10,000
# webhooks. It stops the shared RabbitMQ and PostgreSQL for real, so it runs apart from
# scripts/test.sh, one scenario at a time (about 6 to 7 minutes on 2 cores). Extra arguments go to nextest, e.g. a filter: bash scripts/faults.sh s6_
# FAULTS_WEBHOOKS=2000 makes a quicker (non-representative) run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# Whatever happens (a failing scenario, Ctrl-C), leave RabbitMQ and PostgreSQL running,
# and no child of an aborted scenario behind (only processes with this suite's configs).
cleanup() {
  for pid in $(pgrep -f 'subsync serve' || true); do
    if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -q '^SUBSYNC_CONFIG=.*/subsync_f_'; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  bash scripts/services.sh >/dev/null 2>&1 || true
}
trap cleanup EXIT
export PATH="$PATH:/usr/sbin"
# Scenario 9 opens 10,000 hostile connections from the test process (and the service it
# starts inherits the limit): raise the soft open-files limit to the hard one if lower.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 16384 ]; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
export SUBSYNC_TEST_DATABASE_URL="${SUBSYNC_TEST_DATABASE_URL:-postgres://subsync:subsync@127.0.0.1:5432/subsync}"
export SUBSYNC_TEST_AMQP_URL="${SUBSYNC_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
started=$(date +%s)
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --test faults --run-ignored only --no-capture --no-fail-fast "$@"
else
  cargo test --test faults -- --ignored --test-threads 1 --nocapture "$@"
fi
echo "[faults] total wall time $(( $(date +%s) - started ))s"
