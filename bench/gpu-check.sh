#!/usr/bin/env bash
# What only a machine with a real NVIDIA GPU can show, as one short script (a few minutes): the
# driver, the agent's GPU inventory and GPU self-test, the CDI spec the rootless engine's GPUs come
# from (`nvidia-ctk cdi generate`), and a container on a rootless Podman given every GPU by its CDI
# name, as a container job on the sealed image gets them. Each section prints what it saw, or
# "not here" and why (a lent GPU machine may lack the container toolkit or Podman); the exit code
# is the number of sections that failed on something that was there.
# Usage: bash bench/gpu-check.sh [path to the agent binary] (default: target/release/agent, else
# target/debug/agent). Set GPU_CHECK_IMAGE to an image with nvidia-smi already on this machine
# (nothing is pulled) for the container section.
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

section "agent: GPU inventory and self-test --gpu"
if [ -x "$agent" ]; then
  "$agent" --version 2>/dev/null || true
  # The inventory line the agent logs at start (and reports at registration).
  "$agent" self-test --gpu --units-dir /nonexistent --scripts-dir /nonexistent 2>&1 |
    sed -n '/NVIDIA\|GPU\|CDI\|nvidia/p' || true
else
  fail "no agent binary (cargo build --release -p agent, or pass its path)"
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
