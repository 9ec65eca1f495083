#!/usr/bin/env bash
# Scaler benchmark: reaction latency from enqueue to raise_desired, long-poll vs plain polling.
# Knob: BENCH_SAMPLES (20).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p scaling --bench reaction -- "$@"
