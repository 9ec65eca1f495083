#!/usr/bin/env bash
# Packer step 4b (as root): pulls FLOTILLA_ENGINE_IMAGES (space-separated references) into
# /var/lib/flotilla-images, the read-only store every container job's rootless engine reads its
# images from (agent/src/compose/engine.rs: `additionalimagestores`), so a job whose images are
# baked starts without a pull. The pulls run as flotilla-job, the user the engines run as, so the
# layers carry that user's id mapping. Any failed pull fails the build.
# Environment: FLOTILLA_ENGINE_IMAGES (may be empty), FLOTILLA_IMAGE_STORE (default
# /var/lib/flotilla-images), FLOTILLA_JOB_USER (default flotilla-job).
set -euo pipefail

IMAGES="${FLOTILLA_ENGINE_IMAGES:-}"
STORE="${FLOTILLA_IMAGE_STORE:-/var/lib/flotilla-images}"
JOB_USER="${FLOTILLA_JOB_USER:-flotilla-job}"

log() { echo "bake-images.sh: $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

if [ -z "${IMAGES// /}" ]; then
  log "no engine images to bake"
  exit 0
fi
command -v podman >/dev/null || die "podman is not installed: cannot bake engine images"
[ -d "$STORE" ] || die "$STORE does not exist (configure.sh makes it)"
# Podman's run state: a short private directory of the job user's (podman refuses long ones).
runtime="$(runuser -u "$JOB_USER" -- mktemp -d /tmp/flotilla-bake-XXXXXX)"
cleanup() {
  pkill -KILL -u "$JOB_USER" 2>/dev/null || true
  rm -rf "$runtime"
}
trap cleanup EXIT
read -r -a images <<<"$IMAGES"
for image in "${images[@]}"; do
  log "pulling $image into $STORE"
  (cd / && runuser -u "$JOB_USER" -- env XDG_RUNTIME_DIR="$runtime" \
    podman --root "$STORE" --runroot "$runtime/containers" --storage-driver overlay pull -q "$image") ||
    die "could not pull $image"
done
(cd / && runuser -u "$JOB_USER" -- env XDG_RUNTIME_DIR="$runtime" \
  podman --root "$STORE" --runroot "$runtime/containers" --storage-driver overlay images)
