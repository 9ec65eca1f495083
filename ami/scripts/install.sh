#!/usr/bin/env bash
# Packer step 3 (as root): install Flotilla into the image.
#   - packages: Docker, git, jq, rsyslog, logrotate (+ curl/gnupg on Ubuntu); Podman, uidmap and
#     slirp4netns for the rootless engine each container job gets (container-engine rootless);
#   - configure.sh: the users `flotilla` (agent) and `flotilla-job` (jobs), sudo, the job record's
#     directory, binaries, scripts and units, sysctl, journald and rsyslog routing, logrotate;
#   - the CloudWatch agent (configured per instance by flotilla-boot);
#   - for hub instances: the AWS CLI (flotilla-hub-boot reads the secrets with it) and the RDS CA
#     bundle at /etc/flotilla/rds-ca.pem (the hub verifies its PostgreSQL server with it).
# Environment (from the Packer template): FLOTILLA_BASE_OS, FLOTILLA_ARCH, FLOTILLA_STAGING.
set -euo pipefail

BASE_OS="${FLOTILLA_BASE_OS:?FLOTILLA_BASE_OS is required (ubuntu-24.04 or al2023)}"
ARCH="${FLOTILLA_ARCH:?FLOTILLA_ARCH is required (x86_64 or arm64)}"
STAGING="${FLOTILLA_STAGING:-/tmp/flotilla}"

# Key that signs the CloudWatch agent packages (docs.aws.amazon.com, "Verify the signature of
# the CloudWatch agent package").
CW_KEY_FINGERPRINT=937616F3450B7D806CBD9725D58167303B789C72
CW_BASE_URL=https://amazoncloudwatch-agent.s3.amazonaws.com
# The CA bundle of every RDS region (docs.aws.amazon.com, "Using SSL/TLS to encrypt a connection
# to a DB instance"), fetched over HTTPS at image build time.
RDS_CA_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem

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
    docker.io docker-buildx docker-compose-v2 git jq rsyslog logrotate curl ca-certificates gnupg \
    podman uidmap slirp4netns
  # No package work at boot or while a job runs: the image is rebuilt instead.
  systemctl disable --now apt-daily.timer apt-daily-upgrade.timer
  apt-get "${apt_opts[@]}" purge -y -q unattended-upgrades
  rsyslog_user=syslog
  ;;
al2023)
  # curl-minimal and gnupg2-minimal are already there; installing curl/gnupg2 would conflict.
  dnf install -y -q docker git jq rsyslog logrotate
  # The rootless engine of container jobs; without it they need JobDockerAccess=true (the agent
  # says so in the job log).
  dnf install -y -q podman shadow-utils slirp4netns ||
    log "WARNING: podman is not available on $BASE_OS: container jobs need JobDockerAccess=true"
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

# --- Flotilla's users, sudo, files, units and log routing (shared with the boot test) -------
FLOTILLA_STAGING="$STAGING" FLOTILLA_RSYSLOG_USER="$rsyslog_user" bash "$STAGING/scripts/configure.sh"
systemctl restart rsyslog.service

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

# --- hub instances: the AWS CLI and the RDS CA bundle (flotilla-hub-boot, flotilla-hub.service) --
case "$BASE_OS" in
ubuntu-24.04)
  # Ubuntu 24.04 has no AWS CLI package; AWS publishes it as a signed classic snap.
  snap install aws-cli --classic
  ;;
al2023)
  dnf install -y -q awscli-2
  ;;
esac
command -v aws >/dev/null 2>&1 || test -x /snap/bin/aws || die "the AWS CLI is not installed"
install -d -m 0755 /etc/flotilla
curl -fsSL --retry 5 -o /etc/flotilla/rds-ca.pem.tmp "$RDS_CA_URL"
grep -q -- '-----BEGIN CERTIFICATE-----' /etc/flotilla/rds-ca.pem.tmp ||
  die "$RDS_CA_URL did not return PEM certificates"
chmod 0644 /etc/flotilla/rds-ca.pem.tmp
mv -f /etc/flotilla/rds-ca.pem.tmp /etc/flotilla/rds-ca.pem

log "done"
