#!/usr/bin/env bash
# Warm pools and the demand forecast (issue 17), in the simulator: for the bursty day and the GPU
# shortage day, seeds 1-5, p50/p95/p99 wait and dollars (running + stopped) per policy, then the
# goals checked per seed (bursty day: flotilla's p95 <= 0.33x semaphore's, p50 <= 2 s, dollars
# <= 0.9x semaphore's; GPU day: every job started, p95 <= 65 s), then the same for flotilla with
# stopped-instance start times at half and double the default (19-25 s, GPU pools +10 s), then
# the trade-off between p50 and dollars on the bursty day (flotilla's --warm-share/--warm-keep:
# the running warm capacity, worst seed). flotilla-before runs with the warm capacity it was measured with (--warm-fraction 0.5
# --warm-max 6). Knobs: SEEDS ("1 2 3 4 5"), EXTRA (more `scaler simulate` options).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p scaler
scaler=target/release/scaler
seeds=${SEEDS:-1 2 3 4 5}
policies=flotilla-before,flotilla,semaphore,buildkite

# rows DAY SEED [OPTIONS...]: "day seed policy p50 p95 p99 run$ stopped$ cost$ never" per policy.
rows() {
  local day=$1 seed=$2
  shift 2
  # shellcheck disable=SC2086
  "$scaler" simulate --trace "$day" --seed "$seed" --policy "$policies" \
    --warm-fraction 0.5 --warm-max 6 ${EXTRA:-} "$@" |
    awk -v day="$day" -v seed="$seed" '
      $1 ~ /^(flotilla|flotilla-before|semaphore|buildkite)$/ {
        gsub(/s$/, "", $2); gsub(/s$/, "", $3); gsub(/s$/, "", $4)
        print day, seed, $1, $2, $3, $4, $8, $9, $10, $11
      }'
}

table() {
  printf '%-13s %4s %-16s %6s %6s %6s %8s %9s %8s %6s\n' \
    day seed policy p50_s p95_s p99_s run_\$ stopped_\$ total_\$ never
  awk '{ printf "%-13s %4s %-16s %6s %6s %6s %8s %9s %8s %6s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
}

# goals: per seed, flotilla against the goals of issue 17.
goals() {
  awk '
    { key = $1 " " $2; p50[key, $3] = $4; p95[key, $3] = $5; cost[key, $3] = $9; never[key, $3] = $10; keys[key] = 1 }
    END {
      for (key in keys) {
        split(key, k, " ")
        if (k[1] == "bursty-day") {
          r95 = p95[key, "flotilla"] / p95[key, "semaphore"]; rc = cost[key, "flotilla"] / cost[key, "semaphore"]
          ok = (r95 <= 0.33 && p50[key, "flotilla"] <= 2 && rc <= 0.9) ? "met" : "missed"
          printf "%-13s %4s %6s %6s %9.2f %9.3f %6s  %s (p95 <= 0.33x semaphore, p50 <= 2 s, cost <= 0.9x semaphore)\n", k[1], k[2], p50[key, "flotilla"], p95[key, "flotilla"], r95, rc, never[key, "flotilla"], ok
        } else {
          ok = (never[key, "flotilla"] == 0 && p95[key, "flotilla"] <= 65) ? "met" : "missed"
          printf "%-13s %4s %6s %6s %9.2f %9s %6s  %s (every job started, p95 <= 0.5x 130 s)\n", k[1], k[2], p50[key, "flotilla"], p95[key, "flotilla"], p95[key, "flotilla"] / 130, "-", never[key, "flotilla"], ok
        }
      }
    }' | sort -k1,1 -k2,2n
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for day in bursty-day gpu-shortage; do
  for seed in $seeds; do
    rows "$day" "$seed" >>"$results"
  done
done
echo "== Waits and dollars per policy (seeds: $seeds)"
table <"$results"
echo
echo "== Goals of issue 17, flotilla per seed"
# p95 ratio: to semaphore's p95 on the bursty day, to 130 s (before issue 17) on the GPU day.
printf '%-13s %4s %6s %6s %9s %9s %6s  %s\n' day seed p50_s p95_s p95_ratio cost/sem never goal
goals <"$results"
echo
echo "== Sensitivity: flotilla with stopped-instance start times scaled"
policies=flotilla
{
  for scale in 0.5 1 2; do
    for day in bursty-day gpu-shortage; do
      for seed in $seeds; do
        rows "$day" "$seed" --start-scale "$scale" | awk -v s="$scale" '{ $3 = "flotilla@x" s; print }'
      done
    done
  done
} | table
echo
echo "== Trade-off on the bursty day: flotilla's running warm capacity (worst of the seeds)"
policies=flotilla,semaphore
printf '%-11s %-10s %8s %9s %9s\n' warm-share warm-keep p50_s p95/sem cost/sem
for share in 0.45 0.6 0.75; do
  for keep in 180 300 600; do
    for seed in $seeds; do
      rows bursty-day "$seed" --warm-share "$share" --warm-keep "$keep"
    done | awk -v share="$share" -v keep="$keep" '
      { p50[$2, $3] = $4; p95[$2, $3] = $5; cost[$2, $3] = $9; seeds[$2] = 1 }
      END {
        for (s in seeds) {
          if (p50[s, "flotilla"] > w50) w50 = p50[s, "flotilla"]
          r = p95[s, "flotilla"] / p95[s, "semaphore"]; if (r > w95) w95 = r
          c = cost[s, "flotilla"] / cost[s, "semaphore"]; if (c > wc) wc = c
        }
        printf "%-11s %-10s %8s %9.2f %9.3f\n", share, keep, w50, w95, wc
      }'
  done
done
