#!/usr/bin/env bash
# Packer step 5 (as root): make every instance boot like a fresh one. Instances must not share
# cloud-init state, SSH host keys, the machine id, logs or the builder's authorized key.
set -euo pipefail

log() { echo "cleanup.sh: $*" >&2; }

# cloud-init runs as on a new instance (user data, SSH host keys, default user's key).
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs --seed
fi

# SSH host keys are regenerated at first boot (cloud-init / sshd-keygen); the builder's
# temporary key goes too (the current SSH session stays open).
rm -f /etc/ssh/ssh_host_*
rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys

# Empty (not missing, not "uninitialized": that would make systemd treat the boot as the first
# one and re-apply unit presets) machine id: systemd generates a new one at boot.
truncate -s 0 /etc/machine-id
rm -f /var/lib/systemd/random-seed

# No job record in the image: an instance with one would never register.
rm -f /var/lib/flotilla/job-taken

# Packages' caches.
if command -v apt-get >/dev/null 2>&1; then
  apt-get clean
  rm -rf /var/lib/apt/lists/*
fi
if command -v dnf >/dev/null 2>&1; then
  dnf clean all -q
fi

# Logs: journal, rotated files, the builder's lines in the remaining ones, Flotilla's files.
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
rm -rf /var/log/journal/*/
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' -o -name '*-[0-9]*' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -f /var/log/flotilla/*

# Staging files, shell history, leftovers of the build.
rm -rf /tmp/flotilla /var/tmp/*
rm -f /root/.bash_history /home/*/.bash_history
rm -rf /run/flotilla

sync
log "done"
