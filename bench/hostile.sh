#!/usr/bin/env bash
# The hub under hostile load: builds release and prints, for 200 real agents syncing every 100 ms
# against a served hub (SQLite, default limits), their sync p99 under each attack as a ratio to
# the same hub unattacked in the same run: 10,000 idle connections (with the slowest /healthz on
# a new connection), 200 unauthenticated 32 MiB log pushes (with the hub process's peak RSS
# growth), syncs with random tokens from 64 connections (the attacker prints its rate); then
# 1,000 registrations with maximal fields (refused, RSS growth) and a restart over 1,000,000
# historical agent rows (time to ready, RSS growth). Each attacker is a process of its own; on
# a 2-core machine it still shares the cores with the hub and the agents.
# Knobs: BENCH_SECONDS (5, per measurement), BENCH_IDLE (10000), BENCH_HISTORY (1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p hub --bench hostile -- "$@"
