#!/usr/bin/env bash
# Packer step 3b (as root), run by install.sh once packages are in; also run as-is by the
# sealed-instance boot test (agent/tests/it/sealed_instance.rs) to build the image's root file system,
# so what is tested is what ships. It sets up everything that is Flotilla's own:
#   - users: `flotilla` (the agent; uid 2000 when free) and `flotilla-job` (jobs; uid 2001 when
#     free). The agent starts the job's shell as flotilla-job (`--job-user`), with the
#     capabilities its unit grants (CAP_SETUID, CAP_SETGID, CAP_KILL) and nothing else;
#   - sudo: the agent may run exactly `systemctl poweroff` (its last resort after a job); the job
#     user has no sudo and no docker group unless the stack turns them on at boot (flotilla-seal);
#   - /var/lib/flotilla (the job record) and /run/flotilla (boot env files) out of the job's reach;
#   - binaries, scripts, units; /proc hidden per user and ptrace limited (sysctl);
#   - logs: journald limits; rsyslog reads the journal's trusted fields (uid, unit) so that only the
#     agent's own lines reach P/agent, nothing the job user logs and no auth/sudo line leaves the
#     instance.
# Environment: FLOTILLA_STAGING (default /tmp/flotilla), FLOTILLA_RSYSLOG_USER (default syslog).
set -euo pipefail

STAGING="${FLOTILLA_STAGING:-/tmp/flotilla}"
RSYSLOG_USER="${FLOTILLA_RSYSLOG_USER:-syslog}"

log() { echo "configure.sh: $*" >&2; }

# --- users ------------------------------------------------------------------------------------
add_user() { # NAME PREFERRED-UID
  id "$1" >/dev/null 2>&1 && return 0
  local uid_opt=()
  getent passwd "$2" >/dev/null || getent group "$2" >/dev/null || uid_opt=(--uid "$2")
  useradd --create-home --shell /bin/bash --user-group "${uid_opt[@]}" "$1"
}
add_user flotilla 2000
add_user flotilla-job 2001
chmod 0700 /home/flotilla
chmod 0750 /home/flotilla-job
# The agent reads what it hands the job through the job's group (its scratch directory is
# flotilla:flotilla-job 2750); the job gains nothing of the agent's.
usermod -aG flotilla-job flotilla
# The agent drives Docker for container jobs; the job user gets the group only when the stack
# says so (JobDockerAccess), because docker membership is root on the host.
if getent group docker >/dev/null; then usermod -aG docker flotilla; fi
# Each container job gets a rootless engine of its own, as flotilla-job (agent/src/compose/engine.rs):
# its containers' users are flotilla-job's subordinate ids. useradd gives a new user a range where
# login.defs says so; make sure of one, and of the store of images baked for those engines
# (bake-images.sh), which flotilla-job fills and reads.
for kind in uid gid; do
  if ! grep -q "^flotilla-job:" "/etc/sub$kind"; then
    usermod "--add-sub${kind}s" 100000-165535 flotilla-job
  fi
done
install -d -o flotilla-job -g flotilla-job -m 0755 /var/lib/flotilla-images
# GPU device nodes are group video/render on the GPU image: the job keeps the GPUs.
for group in video render; do
  if getent group "$group" >/dev/null; then usermod -aG "$group" flotilla-job; fi
done

# --- sudo -------------------------------------------------------------------------------------
cat >/etc/sudoers.d/90-flotilla <<'SUDO'
# Flotilla agent user: only its last resort after a job (power the instance off). Jobs run as
# flotilla-job, which has no sudo unless the stack's JobSudo turns it on at boot
# (/etc/sudoers.d/91-flotilla-job, written by flotilla-seal).
flotilla ALL=(root) NOPASSWD: /usr/bin/systemctl poweroff
Defaults:flotilla !syslog
SUDO
chmod 0440 /etc/sudoers.d/90-flotilla
visudo -cf /etc/sudoers.d/90-flotilla >/dev/null
rm -f /etc/sudoers.d/91-flotilla-job

# The agent's job record (--job-record-file /var/lib/flotilla/job-taken, docs/aws-contract.md):
# a root-owned directory in which the flotilla group may create files; the sticky bit keeps it
# from removing or replacing files it did not create; the job user cannot enter it. It persists
# across reboots, so an agent started after a reboot still finds the record and does not register.
install -d -o root -g flotilla -m 1770 /var/lib/flotilla

# --- binaries, scripts, units -----------------------------------------------------------------
install -m 0755 "$STAGING/agent" /usr/local/bin/agent
if [ -f "$STAGING/scaler" ]; then install -m 0755 "$STAGING/scaler" /usr/local/bin/scaler; fi
install -d -m 0755 /usr/local/lib/flotilla
install -m 0755 "$STAGING/scripts/flotilla-boot" "$STAGING/scripts/flotilla-boot-deadline" \
  "$STAGING/scripts/flotilla-seal" "$STAGING/scripts/flotilla-hub-boot" /usr/local/lib/flotilla/
# Debug jobs (KeepFailedInstanceMinutes): `sudo flotilla-debug-job` from a Session Manager session.
install -m 0755 "$STAGING/scripts/flotilla-debug-job" /usr/local/bin/flotilla-debug-job
if [ -f "$STAGING/cloudwatch-agent.json" ]; then
  install -m 0644 "$STAGING/cloudwatch-agent.json" /usr/local/lib/flotilla/cloudwatch-agent.json
fi
install -m 0644 "$STAGING"/systemd/flotilla-* /etc/systemd/system/
systemctl daemon-reload 2>/dev/null || true
systemctl enable flotilla-firewall.service flotilla-boot.service flotilla-seal.service flotilla-agent.service \
  flotilla-scaler.service flotilla-hub.service flotilla-boot-deadline.timer

# --- cron and at: root only ------------------------------------------------------------------
# A job's `crontab` or `at` entry would run on a later boot of the used machine, before anything
# of Flotilla's; only root may schedule (flotilla-seal also clears the job user's spool when a
# used machine boots again).
printf 'root\n' >/etc/cron.allow
printf 'root\n' >/etc/at.allow
chmod 0644 /etc/cron.allow /etc/at.allow

# --- processes --------------------------------------------------------------------------------
# The job cannot attach to anything it did not start (it already cannot to other users' processes);
# /proc is private to each user inside the agent's unit (ProtectProc=invisible there).
install -d -m 0755 /etc/sysctl.d
cat >/etc/sysctl.d/90-flotilla.conf <<'CONF'
kernel.yama.ptrace_scope = 2
kernel.dmesg_restrict = 1
fs.protected_hardlinks = 1
fs.protected_symlinks = 1
fs.protected_regular = 2
fs.protected_fifos = 2
kernel.kptr_restrict = 2
kernel.perf_event_paranoid = 3
kernel.unprivileged_bpf_disabled = 1
vm.unprivileged_userfaultfd = 0
dev.tty.legacy_tiocsti = 0
kernel.io_uring_disabled = 2
CONF

# --- logs -------------------------------------------------------------------------------------
# journald: bigger burst limit (a failing agent can be chatty), bounded disk use; rsyslog reads
# the journal itself (imjournal) to get the trusted fields, so journald does not forward.
install -d -m 0755 /etc/systemd/journald.conf.d
cat >/etc/systemd/journald.conf.d/90-flotilla.conf <<'CONF'
[Journal]
RateLimitIntervalSec=30s
RateLimitBurst=20000
SystemMaxUse=1G
RuntimeMaxUse=256M
ForwardToSyslog=no
CONF

agent_uid="$(id -u flotilla)"
job_uid="$(id -u flotilla-job)"
install -d -m 0755 -o "$RSYSLOG_USER" /var/log/flotilla
# Which lines go where is decided on the journal's trusted fields (_UID, _SYSTEMD_UNIT), which a
# process cannot forge, never on the syslog tag (any user can log as `flotilla-agent`).
cat >/etc/rsyslog.d/10-flotilla.conf <<CONF
# Flotilla: one file per CloudWatch log group (P/agent, P/scaler, P/hub, P/system).
module(load="imjournal" StateFile="flotilla-imjournal.state" IgnorePreviousMessages="off")
# Never shipped: authentication and sudo lines (sudo's COMMAND= carries command lines, secrets
# included), and anything the job user logs (the job's output reaches the job log instead).
if \$syslogfacility-text == 'authpriv' or \$syslogfacility-text == 'auth' or \$programname == 'sudo' then stop
if \$!_UID == '$job_uid' then stop
if \$!_SYSTEMD_UNIT == 'flotilla-agent.service' and \$!_UID == '$agent_uid' then {
  action(type="omfile" file="/var/log/flotilla/agent.log" fileCreateMode="0640")
  stop
}
if \$!_SYSTEMD_UNIT == 'flotilla-agent.service' then stop
if \$!_SYSTEMD_UNIT == 'flotilla-scaler.service' then {
  action(type="omfile" file="/var/log/flotilla/scaler.log" fileCreateMode="0640")
  stop
}
if \$!_SYSTEMD_UNIT == 'flotilla-hub.service' then {
  action(type="omfile" file="/var/log/flotilla/hub.log" fileCreateMode="0640")
  stop
}
action(type="omfile" file="/var/log/flotilla/system.log" fileCreateMode="0640")
CONF
rsyslogd -N1 -f /etc/rsyslog.conf >/dev/null
systemctl enable rsyslog.service

cat >/etc/logrotate.d/flotilla <<'CONF'
# The scaler keeps its EMF file open (append): copy and truncate it in place.
/var/log/flotilla-scaler/*.log {
  daily
  maxsize 100M
  rotate 2
  missingok
  notifempty
  compress
  copytruncate
}
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
log "done"
