#!/usr/bin/env bash
# Packer step 3b (as root): Semaphore's self-hosted toolbox for the job user, as Semaphore's own
# self-hosted install lays it out (the files in ~/.toolbox, its commands on PATH, `checkout` and
# `sem-version` as shell functions of every login shell), so a pipeline's `checkout`, `cache`,
# `artifact`, `test-results` and `retry` work on Flotilla's image. The release tarball is
# downloaded from the toolbox's GitHub releases (or taken from FLOTILLA_TOOLBOX_TARBALL, a local
# file) and must match FLOTILLA_TOOLBOX_SHA256 before anything of it is unpacked: any mismatch
# fails the build. Upstream's own `install-toolbox` is not run (it needs sudo, Erlang and writes
# an SSH config that turns host key checks off); this script does its layout instead.
# The files are root's (the job reads and runs them, and cannot change the machine's copy).
# Environment: FLOTILLA_TOOLBOX_VERSION (a release tag, e.g. v1.41.0), FLOTILLA_TOOLBOX_SHA256
# (64 hex digits, required), FLOTILLA_TOOLBOX_TARBALL (optional local file), FLOTILLA_ARCH
# (x86_64|arm64), FLOTILLA_JOB_USER (default flotilla-job), FLOTILLA_TOOLBOX_BIN_DIR (default
# /usr/local/bin), FLOTILLA_PROFILE_D (default /etc/profile.d).
set -euo pipefail

VERSION="${FLOTILLA_TOOLBOX_VERSION:-}"
SHA256="${FLOTILLA_TOOLBOX_SHA256:-}"
TARBALL="${FLOTILLA_TOOLBOX_TARBALL:-}"
ARCH="${FLOTILLA_ARCH:-x86_64}"
JOB_USER="${FLOTILLA_JOB_USER:-flotilla-job}"
BIN_DIR="${FLOTILLA_TOOLBOX_BIN_DIR:-/usr/local/bin}"
PROFILE_D="${FLOTILLA_PROFILE_D:-/etc/profile.d}"
# The toolbox's commands a pipeline calls (checkout is a function of libcheckout).
REQUIRED=(toolbox libcheckout cache artifact test-results retry)
OPTIONAL=(sem-context sem-service sem-service-check-params sem-dockerize sem-semantic-release install-package spc)

log() { echo "install-toolbox.sh: $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

[[ "$SHA256" =~ ^[0-9a-f]{64}$ ]] ||
  die "FLOTILLA_TOOLBOX_SHA256 must be the SHA-256 (64 lowercase hex digits) of the toolbox tarball, got '${SHA256}'"
home="$(getent passwd "$JOB_USER" | cut -d: -f6)"
if [ -z "$home" ] || [ ! -d "$home" ]; then
  die "the job user $JOB_USER has no home directory"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ -n "$TARBALL" ]; then
  cp -- "$TARBALL" "$work/toolbox.tar"
else
  [[ "$VERSION" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    die "FLOTILLA_TOOLBOX_VERSION must be a release tag such as v1.41.0, got '${VERSION}'"
  asset=self-hosted-linux.tar
  [ "$ARCH" = arm64 ] && asset=self-hosted-linux-arm.tar
  url="https://github.com/semaphoreci/toolbox/releases/download/${VERSION}/${asset}"
  log "downloading $url"
  curl -fsSL --retry 5 --connect-timeout 10 -o "$work/toolbox.tar" "$url" || die "could not download $url"
fi
echo "$SHA256  $work/toolbox.tar" | sha256sum --check --status ||
  die "the toolbox tarball's SHA-256 is $(sha256sum "$work/toolbox.tar" | cut -c1-64), not $SHA256: refusing it"

mkdir "$work/unpacked"
tar -xf "$work/toolbox.tar" -C "$work/unpacked" --no-same-owner --no-same-permissions
[ -d "$work/unpacked/toolbox" ] || die "the tarball has no toolbox/ directory"
for name in "${REQUIRED[@]}"; do
  [ -f "$work/unpacked/toolbox/$name" ] || die "the tarball's toolbox has no $name"
done

rm -rf "$home/.toolbox"
cp -R "$work/unpacked/toolbox" "$home/.toolbox"
chown -R root:root "$home/.toolbox"
chmod -R u=rwX,go=rX "$home/.toolbox"
for name in cache artifact test-results retry "${OPTIONAL[@]}"; do
  [ -f "$home/.toolbox/$name" ] || continue
  chmod 0755 "$home/.toolbox/$name"
  ln -sfn "$home/.toolbox/$name" "$BIN_DIR/$name"
done
install -d -m 0755 "$PROFILE_D"
cat >"$PROFILE_D/semaphore-toolbox.sh" <<'EOF'
# Semaphore's toolbox (checkout, sem-version, ...) in every bash login shell whose user has one
# (installed by Flotilla's ami/scripts/install-toolbox.sh).
if [ -n "${BASH_VERSION:-}" ] && [ -r "$HOME/.toolbox/toolbox" ]; then
  . "$HOME/.toolbox/toolbox"
fi
EOF
chmod 0644 "$PROFILE_D/semaphore-toolbox.sh"
log "installed the toolbox ${VERSION:-from $TARBALL} for $JOB_USER in $home/.toolbox"
