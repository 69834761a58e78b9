#!/usr/bin/env bash
# Run subsync on this machine: installs and starts RabbitMQ and PostgreSQL on loopback if
# needed, builds, migrates and serves with config/default.toml (or $SUBSYNC_CONFIG).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --release --bin subsync
./target/release/subsync migrate
exec ./target/release/subsync serve "$@"
