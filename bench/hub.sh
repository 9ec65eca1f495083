#!/usr/bin/env bash
# Hub benchmarks: builds release and prints sync throughput/latency and dispatch rates.
# Knobs: BENCH_AGENTS (10000), BENCH_CONNECTIONS (64), BENCH_SECONDS (10), BENCH_JOBS (5000).
# Pass `sync` or `dispatch` to run one.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p hub --bench hub -- "$@"
