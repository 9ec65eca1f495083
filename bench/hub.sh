#!/usr/bin/env bash
# Hub benchmarks: builds release and prints sync throughput/latency and dispatch rates, each on
# SQLite, on PostgreSQL with one hub and on PostgreSQL with two hub replicas sharing the database,
# PostgreSQL's figures also as ratios to SQLite's from the same run.
# PostgreSQL: FLOTILLA_BENCH_POSTGRES=postgres://USER:PASSWORD@HOST:PORT/postgres (a role with
# CREATEDB; a fresh database per variant, dropped after it), else FLOTILLA_TEST_POSTGRES, which
# `source .ci/postgres` sets after starting a local server (as root).
# Knobs: BENCH_AGENTS (10000), BENCH_CONNECTIONS (64), BENCH_SECONDS (10, per variant),
# BENCH_JOBS (5000), BENCH_DISPATCH_AGENTS (64).
# Pass `sync` or `dispatch` to run one.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p hub --bench hub -- "$@"
