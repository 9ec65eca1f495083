#!/usr/bin/env bash
# Packer step 3 (as root): install Flotilla into the image.
#   - packages: Docker, git, jq, rsyslog, logrotate (+ curl/gnupg on Ubuntu);
#   - user `flotilla` (uid 2000 when free) in the docker group, passwordless sudo;
#   - /usr/local/bin/{agent,scaler}, /usr/local/lib/flotilla/{flotilla-boot,flotilla-boot-deadline,
#     cloudwatch-agent.json}, units in /etc/systemd/system (enabled);
#   - journald limits, rsyslog rules journald -> /var/log/flotilla/{agent,scaler,system}.log,
#     logrotate, and the CloudWatch agent (configured per instance by flotilla-boot).
# Environment (from the Packer template): FLOTILLA_BASE_OS, FLOTILLA_ARCH, FLOTILLA_STAGING.
set -euo pipefail

BASE_OS="${FLOTILLA_BASE_OS:?FLOTILLA_BASE_OS is required (ubuntu-24.04 or al2023)}"
ARCH="${FLOTILLA_ARCH:?FLOTILLA_ARCH is required (x86_64 or arm64)}"
STAGING="${FLOTILLA_STAGING:-/tmp/flotilla}"

# Key that signs the CloudWatch agent packages (docs.aws.amazon.com, "Verify the signature of
# the CloudWatch agent package").
CW_KEY_FINGERPRINT=937616F3450B7D806CBD9725D58167303B789C72
CW_BASE_URL=https://amazoncloudwatch-agent.s3.amazonaws.com

log() { echo "install.sh: $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# --- the binaries must be Linux ELF executables for this image's architecture --------------
elf_machine() { # prints the ELF e_machine field (little endian) as 4 hex digits
  od -An -tx1 -j18 -N2 "$1" | tr -d ' \n'
}
case "$ARCH" in
x86_64) want_machine=3e00 ;;
arm64) want_machine=b700 ;;
*) die "unknown FLOTILLA_ARCH: $ARCH" ;;
esac
for bin in agent scaler; do
  [ -f "$STAGING/$bin" ] || die "$STAGING/$bin was not uploaded"
  [ "$(head -c 4 "$STAGING/$bin" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] ||
    die "$bin is not an ELF executable (build it for Linux: see ami/README.md)"
  [ "$(elf_machine "$STAGING/$bin")" = "$want_machine" ] ||
    die "$bin is not built for $ARCH (ELF machine $(elf_machine "$STAGING/$bin"))"
done

# --- packages -------------------------------------------------------------------------------
case "$BASE_OS" in
ubuntu-24.04)
  export DEBIAN_FRONTEND=noninteractive
  apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  apt-get "${apt_opts[@]}" update -q
  apt-get "${apt_opts[@]}" install -y -q --no-install-recommends \
    docker.io docker-buildx docker-compose-v2 git jq rsyslog logrotate curl ca-certificates gnupg
  # No package work at boot or while a job runs: the image is rebuilt instead.
  systemctl disable --now apt-daily.timer apt-daily-upgrade.timer
  apt-get "${apt_opts[@]}" purge -y -q unattended-upgrades
  rsyslog_user=syslog
  ;;
al2023)
  # curl-minimal and gnupg2-minimal are already there; installing curl/gnupg2 would conflict.
  dnf install -y -q docker git jq rsyslog logrotate
  systemctl disable --now dnf-makecache.timer
  rsyslog_user=root
  ;;
*) die "unknown FLOTILLA_BASE_OS: $BASE_OS" ;;
esac

# Docker: rotate container logs so long jobs cannot fill the disk.
install -d -m 0755 /etc/docker
if [ ! -s /etc/docker/daemon.json ]; then
  cat >/etc/docker/daemon.json <<'JSON'
{
  "log-driver": "json-file",
  "log-opts": { "max-size": "50m", "max-file": "2" }
}
JSON
fi
systemctl enable docker.service
systemctl restart docker.service

# --- user -----------------------------------------------------------------------------------
if ! id flotilla >/dev/null 2>&1; then
  uid_opt=()
  getent passwd 2000 >/dev/null || getent group 2000 >/dev/null || uid_opt=(--uid 2000 --user-group)
  useradd --create-home --shell /bin/bash "${uid_opt[@]}" flotilla
fi
usermod -aG docker flotilla
cat >/etc/sudoers.d/90-flotilla <<'SUDO'
# Flotilla agent user: jobs may use sudo; the agent powers the instance off with
# `sudo /usr/bin/systemctl poweroff` as its last resort after a job.
flotilla ALL=(ALL) NOPASSWD:ALL
SUDO
chmod 0440 /etc/sudoers.d/90-flotilla
visudo -cf /etc/sudoers.d/90-flotilla >/dev/null

# The agent's job record (--job-record-file /var/lib/flotilla/job-taken, docs/aws-contract.md):
# a root-owned directory in which the flotilla group may create files; the sticky bit keeps it
# from removing or replacing files it did not create. It persists across reboots, so an agent
# started after a reboot still finds the record and does not register.
install -d -o root -g flotilla -m 1770 /var/lib/flotilla

# --- binaries, scripts, units ---------------------------------------------------------------
install -m 0755 "$STAGING/agent" /usr/local/bin/agent
install -m 0755 "$STAGING/scaler" /usr/local/bin/scaler
install -d -m 0755 /usr/local/lib/flotilla
install -m 0755 "$STAGING/scripts/flotilla-boot" "$STAGING/scripts/flotilla-boot-deadline" /usr/local/lib/flotilla/
install -m 0644 "$STAGING/cloudwatch-agent.json" /usr/local/lib/flotilla/cloudwatch-agent.json
install -m 0644 "$STAGING"/systemd/flotilla-* /etc/systemd/system/
systemctl daemon-reload
systemctl enable flotilla-boot.service flotilla-agent.service flotilla-scaler.service flotilla-boot-deadline.timer

# --- logs -----------------------------------------------------------------------------------
# journald: bigger burst limit (a failing agent can be chatty), bounded disk use.
install -d -m 0755 /etc/systemd/journald.conf.d
cat >/etc/systemd/journald.conf.d/90-flotilla.conf <<'CONF'
[Journal]
RateLimitIntervalSec=30s
RateLimitBurst=20000
SystemMaxUse=1G
RuntimeMaxUse=256M
CONF

# The CloudWatch agent reads files, not the journal: rsyslog (fed by journald on both
# distributions) splits the units' output by SyslogIdentifier into one file per log group.
install -d -m 0755 -o "$rsyslog_user" /var/log/flotilla
cat >/etc/rsyslog.d/10-flotilla.conf <<'CONF'
# Flotilla: one file per CloudWatch log group (P/agent, P/scaler, P/system).
if $programname == 'flotilla-agent' then {
  action(type="omfile" file="/var/log/flotilla/agent.log" fileCreateMode="0640")
  stop
}
if $programname == 'flotilla-scaler' then {
  action(type="omfile" file="/var/log/flotilla/scaler.log" fileCreateMode="0640")
  stop
}
action(type="omfile" file="/var/log/flotilla/system.log" fileCreateMode="0640")
CONF
rsyslogd -N1 -f /etc/rsyslog.conf >/dev/null
systemctl enable rsyslog.service
systemctl restart rsyslog.service

cat >/etc/logrotate.d/flotilla <<'CONF'
/var/log/flotilla/*.log {
  daily
  maxsize 100M
  rotate 3
  missingok
  notifempty
  compress
  delaycompress
  sharedscripts
  postrotate
    systemctl kill -s HUP rsyslog.service >/dev/null 2>&1 || true
  endscript
}
CONF

# --- CloudWatch agent (started at boot by flotilla-boot with the rendered config) ------------
case "$BASE_OS" in
ubuntu-24.04)
  deb_arch=amd64
  [ "$ARCH" = arm64 ] && deb_arch=arm64
  dl="$(mktemp -d)"
  curl -fsSL --retry 5 -o "$dl/key.gpg" "$CW_BASE_URL/assets/amazon-cloudwatch-agent.gpg"
  curl -fsSL --retry 5 -o "$dl/cwagent.deb" "$CW_BASE_URL/ubuntu/$deb_arch/latest/amazon-cloudwatch-agent.deb"
  curl -fsSL --retry 5 -o "$dl/cwagent.deb.sig" "$CW_BASE_URL/ubuntu/$deb_arch/latest/amazon-cloudwatch-agent.deb.sig"
  export GNUPGHOME="$dl/gnupg"
  install -d -m 0700 "$GNUPGHOME"
  gpg --batch --quiet --import "$dl/key.gpg"
  fingerprint="$(gpg --batch --with-colons --fingerprint | awk -F: '/^fpr:/ { print $10; exit }')"
  [ "$fingerprint" = "$CW_KEY_FINGERPRINT" ] ||
    die "CloudWatch agent signing key has fingerprint '$fingerprint', expected $CW_KEY_FINGERPRINT"
  gpg --batch --verify "$dl/cwagent.deb.sig" "$dl/cwagent.deb" ||
    die "the CloudWatch agent package's signature does not verify"
  unset GNUPGHOME
  apt-get "${apt_opts[@]}" install -y -q "$dl/cwagent.deb"
  rm -rf "$dl"
  ;;
al2023)
  dnf install -y -q amazon-cloudwatch-agent
  ;;
esac
test -x /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl ||
  die "the CloudWatch agent is not installed"
# Not enabled here: flotilla-boot starts it once the per-instance configuration exists.
systemctl disable amazon-cloudwatch-agent.service 2>/dev/null || true

log "done"
