#!/usr/bin/env bash
# Fuzzes the admin API against its own OpenAPI document with schemathesis (from PyPI):
# starts subsync on loopback (fresh database, its own queues, free ports, a known token)
# against the RabbitMQ and PostgreSQL that scripts/services.sh runs, seeds a little data,
# then `st run` checks that no answer is a server error or contradicts the document.
# Idempotent; cleans up after itself (service, database, queues and exchanges).
# Arguments are passed on to `st run` (for example --include-path /admin/dlq).
#   SUBSYNC_ST_MAX_EXAMPLES  test cases per operation and phase (default 100)
#   SUBSYNC_ST_SEED          schemathesis seed (default: random; printed, so a run can be replayed)
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
PIKA_VERSION=1.3.2
MAX_EXAMPLES="${SUBSYNC_ST_MAX_EXAMPLES:-100}"
SEED="${SUBSYNC_ST_SEED:-$RANDOM$RANDOM}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
VENV="$TARGET_DIR/schemathesis-venv"
BASE_DB_URL="${SUBSYNC_TEST_DATABASE_URL:-postgres://subsync:subsync@127.0.0.1:5432/subsync}"
AMQP_URL="${SUBSYNC_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
TOKEN="schemathesis-admin-token-$RANDOM$RANDOM"
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance

log() { printf '[schemathesis] %s\n' "$*" >&2; }
started=$SECONDS

# 1. schemathesis (and pika, for deleting the queues and exchanges) in a cached virtualenv.
if ! "$VENV/bin/st" --version 2>/dev/null | grep -qx "st, version $ST_VERSION" \
  || ! "$VENV/bin/python" -c "import pika, sys; sys.exit(pika.__version__ != '$PIKA_VERSION')" 2>/dev/null; then
  log "installing schemathesis $ST_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION" "pika==$PIKA_VERSION"
fi

# 2. Services (idempotent, quick when already up) and the binary.
bash scripts/services.sh
cargo build -q --bin subsync
BIN="$TARGET_DIR/debug/subsync"

# 3. A fresh database, a unique queue prefix, free ports and a temporary config. demo-stripe
#    gets a retry API (the discard port: its first retry is hours away, never called) so a
#    failed payment schedules a retry to list.
suffix="$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
DB="subsync_test_schemathesis_$suffix"
PREFIX="subsync-schemathesis-$suffix"
DB_URL="${BASE_DB_URL%/*}/$DB"
read -r INGRESS_PORT ADMIN_PORT < <("$VENV/bin/python" - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
WORK="$(mktemp -d)"
CONFIG="$WORK/subsync.toml"
SERVICE_LOG="$WORK/subsync.log"
SERVICE_PID=""
SUMMARY="" # printed last, after the cleanup

cleanup() {
  local rc=$?
  set +e
  if [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null; then
    kill -TERM "$SERVICE_PID"
    for _ in $(seq 1 100); do kill -0 "$SERVICE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$SERVICE_PID" 2>/dev/null && kill -KILL "$SERVICE_PID"
    wait "$SERVICE_PID" 2>/dev/null
  fi
  if [ "$rc" -ne 0 ] && [ -z "$SUMMARY" ] && [ -s "$SERVICE_LOG" ]; then
    log "last lines of the service log:"
    tail -n 40 "$SERVICE_LOG" >&2
  fi
  psql "$BASE_DB_URL" -qAt -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 \
    || log "could not drop database $DB"
  "$VENV/bin/python" - "$AMQP_URL" "$PREFIX" <<'PY' || log "could not delete the queues and exchanges of $PREFIX"
import sys, pika
url, prefix = sys.argv[1:]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
for q in ("work", "dlq"):
    ch.queue_delete(f"{prefix}.{q}")
for x in ("events", "dlx"):
    ch.exchange_delete(f"{prefix}.{x}")
conn.close()
PY
  rm -rf "$WORK"
  [ -z "$SUMMARY" ] || echo "$SUMMARY"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql "$BASE_DB_URL" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB\"" >/dev/null
sed -e "s|^url = \"postgres://.*\"|url = \"$DB_URL\"|" \
  -e "s|^url = \"amqp://.*\"|url = \"$AMQP_URL\"|" \
  -e "s|^prefix = .*|prefix = \"$PREFIX\"|" \
  -e "s|^ingress_addr = .*|ingress_addr = \"127.0.0.1:$INGRESS_PORT\"|" \
  -e "s|^admin_addr = .*|admin_addr = \"127.0.0.1:$ADMIN_PORT\"|" \
  -e "s|^token = .*|token = \"$TOKEN\"|" \
  -e "s|^format = .*|format = \"json\"|" \
  -e "/^secrets = \[\"whsec_demo_stripe/a api = { base_url = \"http://127.0.0.1:9\", token = \"sk_test_schemathesis\" }" \
  config/default.toml >"$CONFIG"
for want in "$DB_URL" "$PREFIX" ":$INGRESS_PORT\"" ":$ADMIN_PORT\"" "$TOKEN" "sk_test_schemathesis"; do
  grep -qF -- "$want" "$CONFIG" || { log "config/default.toml changed shape: $want not set"; exit 1; }
done

# 4. Start the service and wait until it is ready.
ADMIN="http://127.0.0.1:$ADMIN_PORT"
env -u SUBSYNC_CONFIG "$BIN" serve --config "$CONFIG" >"$SERVICE_LOG" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 1 300); do
  kill -0 "$SERVICE_PID" 2>/dev/null || { log "subsync exited during startup"; exit 1; }
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/readyz")" = 200 ] && break
  sleep 0.2
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/readyz")" = 200 ] || { log "subsync not ready"; exit 1; }
log "subsync ready on $ADMIN (database $DB, prefix $PREFIX)"

# 5. Seed: a Stripe failure (ledger, attempt, scheduled retry), a standard event, and a
#    dead letter (a payload the standard adapter cannot read).
"$BIN" send-test --config "$CONFIG" --source demo-stripe >&2
"$BIN" send-test --config "$CONFIG" --source demo >&2
printf 'not json' >"$WORK/broken.json"
"$BIN" send-test --config "$CONFIG" --source demo --file "$WORK/broken.json" >&2
admin_get() { curl -sf -H "Authorization: Bearer $TOKEN" "$ADMIN$1"; }
DEAD_LETTER=""
for _ in $(seq 1 100); do
  DEAD_LETTER="$(admin_get /admin/dlq | "$VENV/bin/python" -c \
    'import json, sys; print(next((d["id"] for d in json.load(sys.stdin)["dead_letters"]), ""))')"
  [ -n "$DEAD_LETTER" ] && admin_get /admin/retries | grep -q '"sub_0"' \
    && [ "$(admin_get /admin/events | grep -o '"provider_event_id"' | wc -l)" -ge 2 ] && break
  DEAD_LETTER=""
  sleep 0.2
done
[ -n "$DEAD_LETTER" ] || { log "seeding failed: no dead letter, retry or events"; exit 1; }

cat >"$WORK/schemathesis.toml" <<TOML
# No state kept between runs (each has its own ports and data): no .schemathesis/ here.
[cache]
enabled = false
# The edge times below are mostly not RFC 3339 (five-digit or signed years): they serve as
# negative cases on purpose, which is all the dictionary_mismatch warning would say.
[warnings]
display = ["missing_auth", "missing_test_data", "base_url_mismatch", "validation_mismatch",
  "missing_deserializer", "unused_openapi_auth", "unsupported_regex", "method_not_allowed",
  "constants_extraction", "unmatched_filter", "unresolvable_reference", "low_valid_rate",
  "rate_limited", "timeout_units"]

# Known ids, drawn for part of the generated values, so the fuzzer also reaches answers
# with data (200 bodies), not only 404s and empty lists.
[dictionaries.sources]
values = ["demo", "demo-stripe"]
[dictionaries.subscriptions]
values = ["sub_0"]
[dictionaries.dead_letters]
values = ["$DEAD_LETTER"]
# Times at and past the ends of what Postgres and chrono hold (the generator's stay in 1-9999).
[dictionaries.edge_times]
values = ["-4713-11-24T00:00:00Z", "-4713-11-23T23:59:59.999999Z", "-262143-01-01T00:00:00Z",
  "+262142-12-31T23:59:59.999999Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:60Z"]

[parameters]
"path.source_id" = { dictionary = "sources", probability = 0.5 }
"path.subscription_id" = { dictionary = "subscriptions", probability = 0.5 }
"path.id" = { dictionary = "dead_letters", probability = 0.5 }
"query.source_id" = { dictionary = "sources", probability = 0.3 }
"query.source" = { dictionary = "sources", probability = 0.3 }
"body.source_id" = { dictionary = "sources", probability = 0.5 }
"query.since" = { dictionary = "edge_times", probability = 0.2 }
"query.until" = { dictionary = "edge_times", probability = 0.2 }
"body.since" = { dictionary = "edge_times", probability = 0.2 }
"body.until" = { dictionary = "edge_times", probability = 0.2 }
TOML

# 6. Fuzz: the reading operations first (while the seeded data is all there), then the ones
#    that change it (replays, purges).
log "schemathesis $ST_VERSION, seed $SEED, $MAX_EXAMPLES examples per operation"
passed=0
failed=0
st_rc=0
for methods in GET POST; do
  out="$WORK/st-$methods.out"
  rc=0
  "$VENV/bin/st" --config-file "$WORK/schemathesis.toml" run "$ADMIN/admin/openapi.json" \
    --include-method "$methods" \
    --header "Authorization: Bearer $TOKEN" \
    --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --generation-database none \
    --request-timeout 10 \
    --workers 2 \
    --no-color "$@" 2>&1 | tee "$out" || rc=$?
  # "Test cases:" then "  N generated, N passed" or "  N generated, M found K unique failures".
  cases="$(grep -A1 '^Test cases:' "$out" | tail -n 1)"
  generated="$(sed -nE 's/^ *([0-9]+) generated.*/\1/p' <<<"$cases")"
  with_failures="$(sed -nE 's/.* ([0-9]+) found [0-9]+ unique failure.*/\1/p' <<<"$cases")"
  with_failures="${with_failures:-0}"
  if [ "$rc" -ne 0 ] && [ "$with_failures" -eq 0 ]; then with_failures=1; fi # errors
  passed=$((passed + ${generated:-0} - with_failures))
  failed=$((failed + with_failures))
  [ "$rc" -eq 0 ] || st_rc=$rc
done
if grep -q '"level":"ERROR"' "$SERVICE_LOG"; then
  log "errors the service logged during the run:"
  grep '"level":"ERROR"' "$SERVICE_LOG" | tail -n 20 >&2
fi
elapsed=$((SECONDS - started))
if [ "$st_rc" -eq 0 ]; then
  log "PASS in ${elapsed}s (seed $SEED)"
else
  log "FAIL in ${elapsed}s (reproduce with SUBSYNC_ST_SEED=$SEED bash scripts/schemathesis.sh)"
fi
SUMMARY="schemathesis: $passed passed, $failed failed"
exit "$st_rc"
