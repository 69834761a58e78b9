#!/usr/bin/env bash
# Installs (Debian/Ubuntu packages) and starts RabbitMQ and PostgreSQL on loopback, idempotently,
# then creates the `subsync` database role. Safe to run any number of times.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

PG_USER="${SUBSYNC_PG_USER:-subsync}"
PG_PASSWORD="${SUBSYNC_PG_PASSWORD:-subsync}"
PG_DB="${SUBSYNC_PG_DB:-subsync}"

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

log() { printf '[services] %s\n' "$*" >&2; }

install_missing() {
  local missing=()
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
  command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

start_rabbitmq() {
  export PATH="$PATH:/usr/sbin"
  if ! $SUDO rabbitmqctl -q status >/dev/null 2>&1; then
    log "starting rabbitmq"
    # Loopback only: AMQP on 127.0.0.1; epmd and distribution on loopback too.
    $SUDO mkdir -p /etc/rabbitmq
    if [ ! -f /etc/rabbitmq/rabbitmq.conf ] || ! grep -q subsync /etc/rabbitmq/rabbitmq.conf; then
      $SUDO tee /etc/rabbitmq/rabbitmq.conf >/dev/null <<'CONF'
# written by subsync scripts/services.sh
listeners.tcp.default = 127.0.0.1:5672
loopback_users.guest = true
CONF
      $SUDO tee /etc/rabbitmq/rabbitmq-env.conf >/dev/null <<'CONF'
# written by subsync scripts/services.sh
NODE_IP_ADDRESS=127.0.0.1
ERL_EPMD_ADDRESS=127.0.0.1
CONF
    fi
    $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  for _ in $(seq 1 60); do
    if $SUDO rabbitmqctl -q await_startup >/dev/null 2>&1; then
      log "rabbitmq is up"
      return 0
    fi
    sleep 1
  done
  log "rabbitmq did not start"; return 1
}

start_postgres() {
  local version cluster
  version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  cluster=main
  if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$version $cluster$"; then
    $SUDO pg_createcluster "$version" "$cluster" >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $4}' | grep -q online; then
    log "starting postgresql $version"
    $SUDO pg_ctlcluster "$version" "$cluster" start
  fi
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 && break
    sleep 1
  done
  pg_isready -q -h 127.0.0.1 || { log "postgresql did not start"; return 1; }
  # The role may create databases: every integration test gets a fresh one.
  as_postgres psql -q -v ON_ERROR_STOP=1 <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SQL
  if ! as_postgres psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
    as_postgres createdb -O "$PG_USER" "$PG_DB"
  fi
  log "postgresql is up"
}

install_missing
start_postgres
start_rabbitmq
