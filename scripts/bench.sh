#!/usr/bin/env bash
# Benchmarks on this machine: starts RabbitMQ and PostgreSQL on loopback if needed, builds
# the release `subsync` (run as the service under test) and `subsync-bench`, and runs
# `subsync-bench` with the given arguments:
#   bash scripts/bench.sh all            # everything, one markdown table (~6 minutes)
#   bash scripts/bench.sh all --quick    # smoke run (< 1 minute)
#   bash scripts/bench.sh drain --events 200000
#   bash scripts/bench.sh backfill           # pull sync of 100,000 invoices, killed and resumed
#   bash scripts/bench.sh dunning-history    # 10,000 failures for `subsync dunning simulate`
# Subcommands: publish, http, insert, ingress, drain, sustained, backfill, dunning-history, all
# (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# Page-cache writeback in small steady steps rather than in 30-second bursts: PostgreSQL
# leaves its new table pages dirty in the page cache (relation extension is not flushed by
# its *_flush_after settings), and the kernel's default (background writeback at 10% of RAM,
# here 2.3 GiB) writes them all at once when they expire, 100-200 MB in a second, during
# which RabbitMQ's WAL fsyncs, and so every broker confirm, wait 100-450 ms. A host that
# runs the broker or the database wants this; SUBSYNC_BENCH_KEEP_WRITEBACK=1 leaves it be.
if [ "${SUBSYNC_BENCH_KEEP_WRITEBACK:-0}" != 1 ] && [ -w /proc/sys/vm/dirty_background_bytes ]; then
  echo "[bench] vm.dirty_background_bytes = 8 MiB (was $(cat /proc/sys/vm/dirty_background_bytes))" >&2
  echo 8388608 > /proc/sys/vm/dirty_background_bytes
fi
cargo build --release -p subsync -p subsync-bench --bin subsync --bin subsync-bench
exec ./target/release/subsync-bench "$@"
