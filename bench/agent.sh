#!/usr/bin/env bash
# Agent benchmarks: builds release and prints the figures quoted in closing notes.
#   (a) log throughput vs raw PTY, (b) job start overhead, (c) idle RSS.
# Knobs: BENCH_LOG_MB (default 200), BENCH_ROUNDS (3), BENCH_START_JOBS (15), BENCH_VERBOSE=1.
# Pass one of: throughput | start | rss  to run a single benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p agent --bench agent -- "$@"
