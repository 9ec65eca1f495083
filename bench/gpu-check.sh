#!/usr/bin/env bash
# What only a machine with a real NVIDIA GPU can show, as one short script (a few minutes): the
# driver; nvidia-smi's real answers to the agent's queries, captured as test fixtures; the agent's
# GPU inventory, GPU self-test and GPU health gate (`agent gpu-gate`, what a machine passes before
# it registers); a shell job that runs nvidia-smi (`agent run`); the Xid parser on this kernel's
# log; the CDI spec the rootless engine's GPUs come from (`nvidia-ctk cdi generate`), and a
# container on a rootless Podman given every GPU by its CDI name, as a container job on the sealed
# image gets them. Each section prints what it saw, or "not here" and why (a lent GPU machine may
# lack DCGM, the container toolkit or Podman); the exit code is the number of sections that failed
# on something that was there.
# Usage: bash bench/gpu-check.sh [path to the agent binary] (default: target/release/agent, else
# target/debug/agent). Set GPU_CHECK_IMAGE to an image with nvidia-smi already on this machine
# (nothing is pulled) for the container section, and GPU_CHECK_OUT to a directory for the captured
# fixtures (default: a new temporary one; copy them to agent/tests/fixtures/gpu/real/).
set -uo pipefail
agent="${1:-}"
for candidate in "$agent" target/release/agent target/debug/agent; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then agent="$candidate"; break; fi
done
failed=0
section() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*"; failed=$((failed + 1)); }

section "driver (nvidia-smi)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version --format=csv,noheader || fail "nvidia-smi"
else
  fail "no nvidia-smi on this machine"
fi

section "captured fixtures (the agent's queries, -q -x, DCGM)"
out="${GPU_CHECK_OUT:-$(mktemp -d)}"
mkdir -p "$out"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version --format=csv,noheader,nounits \
    >"$out/inventory.csv" 2>&1 || fail "inventory query"
  # The gate's health query (agent/src/gpu_health.rs HEALTH_QUERY): one wrong field fails it all.
  nvidia-smi --query-gpu=index,uuid,ecc.errors.uncorrected.volatile.total,retired_pages.pending,remapped_rows.pending,remapped_rows.failure \
    --format=csv,noheader,nounits >"$out/health.csv" 2>&1 || fail "health query"
  nvidia-smi -q -x >"$out/nvidia-smi-q.xml" 2>&1 || fail "nvidia-smi -q -x"
  nvidia-smi -L >"$out/list.txt" 2>&1 || fail "nvidia-smi -L"
  if command -v dcgmi >/dev/null; then
    timeout 180 dcgmi diag -r 1 >"$out/dcgm-diag.txt" 2>&1
    echo "dcgmi diag -r 1 exit: $?" >>"$out/dcgm-diag.txt"
  else
    echo "not here: no dcgmi (the GPU image installs DCGM)"
  fi
  # What this kernel logs about NVIDIA (the Xid parser's input), if we may read it.
  dmesg 2>/dev/null | grep -E 'NVRM' >"$out/kmsg-nvrm.txt" || true
  for f in "$out"/*; do echo "--- $(basename "$f")"; head -c 1500 "$f"; echo; done
else
  echo "not here: no nvidia-smi"
fi

section "agent: GPU inventory and self-test --gpu"
if [ -x "$agent" ]; then
  "$agent" --version 2>/dev/null || true
  # The inventory line the agent logs at start (and reports at registration).
  "$agent" self-test --gpu --units-dir /nonexistent --scripts-dir /nonexistent 2>&1 |
    sed -n '/NVIDIA\|GPU\|CDI\|nvidia/p' || true
else
  fail "no agent binary (cargo build --release -p agent, or pass its path)"
fi

section "agent gpu-gate (the health gate before registration)"
if [ -x "$agent" ] && [ -s "$out/inventory.csv" ]; then
  # Expect what nvidia-smi sees (count and first model): the gate's own checks must all pass.
  count="$(grep -c . "$out/inventory.csv")"
  model="$(head -n1 "$out/inventory.csv" | cut -d, -f2 | sed 's/^ *NVIDIA *//; s/ *$//')"
  "$agent" gpu-gate --expect-gpus "$count:$model" || fail "agent gpu-gate --expect-gpus $count:$model"
  # The negative control: one GPU more than the machine has must fail the gate.
  if "$agent" gpu-gate --expect-gpus "$((count + 1)):$model" --no-dcgm >/dev/null; then
    fail "the gate passed a machine short of a GPU"
  fi
else
  echo "not here: needs the agent binary and nvidia-smi"
fi

section "a shell job that runs nvidia-smi (agent run)"
if [ -x "$agent" ]; then
  job="$(mktemp --suffix=.yaml)"
  printf 'job_id: gpu-check\ncommands:\n- directive: nvidia-smi -L\n- directive: echo "FLOTILLA_GPU_COUNT=$FLOTILLA_GPU_COUNT NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES"\n' >"$job"
  "$agent" run --format text "$job" || fail "agent run: a shell job with nvidia-smi"
  rm -f "$job"
else
  echo "not here: no agent binary"
fi

section "CDI spec (nvidia-ctk cdi generate)"
if command -v nvidia-ctk >/dev/null; then
  spec="$(mktemp --suffix=.yaml)"
  if nvidia-ctk cdi generate --output="$spec" >/dev/null 2>&1; then
    grep -E '^kind:|^  *- name:|^- name:' "$spec"
  else
    fail "nvidia-ctk cdi generate"
  fi
else
  echo "not here: no nvidia-ctk (the GPU image installs the NVIDIA Container Toolkit)"
  spec=""
fi

section "rootless Podman with nvidia.com/gpu=all"
image="${GPU_CHECK_IMAGE:-}"
if [ -n "$spec" ] && command -v podman >/dev/null && [ -n "$image" ]; then
  cdi_dir="$(mktemp -d)"
  cp "$spec" "$cdi_dir/nvidia.yaml"
  podman --cdi-spec-dir "$cdi_dir" run --rm --device nvidia.com/gpu=all "$image" nvidia-smi -L ||
    fail "podman run --device nvidia.com/gpu=all"
  rm -rf "$cdi_dir"
else
  echo "not here: needs the CDI spec above, podman, and GPU_CHECK_IMAGE (an image with nvidia-smi)"
fi

section "summary"
echo "sections failed: $failed"
exit "$failed"
