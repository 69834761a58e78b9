#!/usr/bin/env bash
# Benchmarks on this machine: starts RabbitMQ and PostgreSQL on loopback if needed, builds
# the release `subsync` (run as the service under test) and `subsync-bench`, and runs
# `subsync-bench` with the given arguments:
#   bash scripts/bench.sh all            # everything, one markdown table (~6 minutes)
#   bash scripts/bench.sh all --quick    # smoke run (< 1 minute)
#   bash scripts/bench.sh drain --events 200000
# Subcommands: publish, http, insert, ingress, drain, sustained, all (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --release --bin subsync --bin subsync-bench
exec ./target/release/subsync-bench "$@"
