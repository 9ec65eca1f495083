#!/usr/bin/env bash
# Packer step 1 (as root): wait for cloud-init, then bring the base image up to date. Packer
# reboots the builder afterwards so later steps (NVIDIA modules) target the newest kernel.
set -euo pipefail

log() { echo "upgrade.sh: $*" >&2; }

if command -v cloud-init >/dev/null 2>&1; then
  log "waiting for cloud-init to finish"
  # Exit status 2 = finished with recoverable errors (still finished).
  cloud-init status --wait >/dev/null || [ "$?" -eq 2 ]
fi

# shellcheck source=/dev/null
. /etc/os-release
case "$ID" in
ubuntu)
  export DEBIAN_FRONTEND=noninteractive
  # Ubuntu's apt timers may hold the dpkg lock right after boot.
  systemctl stop apt-daily.timer apt-daily-upgrade.timer unattended-upgrades.service 2>/dev/null || true
  apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  apt-get "${apt_opts[@]}" update -q
  apt-get "${apt_opts[@]}" -y -q dist-upgrade
  apt-get "${apt_opts[@]}" -y -q autoremove --purge
  ;;
amzn)
  # Move to the newest AL2023 release (the source AMI may be a few weeks old).
  dnf -y -q upgrade --releasever=latest
  ;;
*)
  log "unsupported distribution: $ID"
  exit 1
  ;;
esac
log "done; the next step reboots"
