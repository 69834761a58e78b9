#!/usr/bin/env bash
# Benchmarks on this machine: starts RabbitMQ and PostgreSQL on loopback if needed, builds
# in release mode and runs `subsync-bench` with the given arguments (e.g. `drain`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --release --bin subsync-bench
exec ./target/release/subsync-bench "$@"
