#!/usr/bin/env bash
# Packer step 4, GPU variant only (as root): NVIDIA driver (open kernel modules) for the running
# kernel, NVIDIA Container Toolkit, Docker's `nvidia` runtime as the default one (so container
# jobs see their GPUs from the first boot), then `nvidia-smi` as a build-time check. Docker itself
# comes from install.sh.
#   Ubuntu 24.04: Canonical's signed, precompiled modules (linux-modules-nvidia-B-server-open-KERNEL)
#                 when they exist for the running kernel, else DKMS; userland nvidia-utils-B-server.
#   AL2023:       NVIDIA's CUDA repository for amzn2023, dnf module nvidia-driver:B-open (DKMS).
# Environment: FLOTILLA_BASE_OS, FLOTILLA_ARCH, FLOTILLA_NVIDIA_DRIVER_BRANCH (e.g. 580).
set -euo pipefail

BASE_OS="${FLOTILLA_BASE_OS:?FLOTILLA_BASE_OS is required (ubuntu-24.04 or al2023)}"
ARCH="${FLOTILLA_ARCH:?FLOTILLA_ARCH is required (x86_64 or arm64)}"
BRANCH="${FLOTILLA_NVIDIA_DRIVER_BRANCH:?FLOTILLA_NVIDIA_DRIVER_BRANCH is required (e.g. 580)}"
KERNEL="$(uname -r)"
TOOLKIT_URL=https://nvidia.github.io/libnvidia-container

log() { echo "install-gpu.sh: $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# nouveau must never bind the GPU.
cat >/etc/modprobe.d/blacklist-nouveau.conf <<'CONF'
blacklist nouveau
options nouveau modeset=0
CONF

case "$BASE_OS" in
ubuntu-24.04)
  export DEBIAN_FRONTEND=noninteractive
  apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  apt-get "${apt_opts[@]}" update -q
  pkgs=("nvidia-utils-$BRANCH-server" "libnvidia-compute-$BRANCH-server")
  if apt-cache show "linux-modules-nvidia-$BRANCH-server-open-$KERNEL" >/dev/null 2>&1; then
    log "using Canonical's precompiled modules for $KERNEL"
    pkgs+=("linux-modules-nvidia-$BRANCH-server-open-$KERNEL" "nvidia-headless-no-dkms-$BRANCH-server-open")
  else
    log "no precompiled modules for $KERNEL: building them with DKMS"
    pkgs+=("linux-headers-$KERNEL" "nvidia-headless-$BRANCH-server-open")
  fi
  apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${pkgs[@]}"

  install -d -m 0755 /usr/share/keyrings
  curl -fsSL --retry 5 "$TOOLKIT_URL/gpgkey" | gpg --batch --yes --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
  curl -fsSL --retry 5 "$TOOLKIT_URL/stable/deb/nvidia-container-toolkit.list" |
    sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' \
      >/etc/apt/sources.list.d/nvidia-container-toolkit.list
  apt-get "${apt_opts[@]}" update -q
  apt-get "${apt_opts[@]}" install -y -q nvidia-container-toolkit
  update-initramfs -u
  ;;
al2023)
  case "$ARCH" in
  x86_64) repo_arch=x86_64 ;;
  arm64) repo_arch=sbsa ;;
  *) die "unknown FLOTILLA_ARCH: $ARCH" ;;
  esac
  dnf install -y -q "kernel-devel-$KERNEL" "kernel-headers-$KERNEL" "kernel-modules-extra-$KERNEL"
  curl -fsSL --retry 5 -o /etc/yum.repos.d/cuda-amzn2023.repo \
    "https://developer.download.nvidia.com/compute/cuda/repos/amzn2023/$repo_arch/cuda-amzn2023.repo"
  dnf clean expire-cache
  dnf module enable -y -q "nvidia-driver:$BRANCH-open"
  dnf install -y -q nvidia-open
  # DKMS builds for the running kernel; fail here rather than at the first boot.
  dkms_status="$(dkms status 2>&1)"
  grep -q "nvidia.*$KERNEL.*installed" <<<"$dkms_status" ||
    die "DKMS did not build the NVIDIA modules for $KERNEL: $dkms_status"

  curl -fsSL --retry 5 -o /etc/yum.repos.d/nvidia-container-toolkit.repo \
    "$TOOLKIT_URL/stable/rpm/nvidia-container-toolkit.repo"
  dnf install -y -q nvidia-container-toolkit
  dracut --force
  ;;
*) die "unknown FLOTILLA_BASE_OS: $BASE_OS" ;;
esac

# DCGM, for the agent's GPU health gate (`dcgmi diag -r 1` before registration, run when dcgmi is
# installed; agent/src/gpu_health.rs). From NVIDIA's CUDA repository: on Ubuntu x86_64 through
# its keyring package, pinned by checksum (the CUDA repository has no arm64 Ubuntu keyring we pin:
# there the gate runs without DCGM); on AL2023 the repository added above. Its host engine runs as
# nvidia-dcgm.service (dcgmi talks to it).
DCGM_PACKAGE=datacenter-gpu-manager-4-cuda12
CUDA_KEYRING_SHA256=d2a6b11c096396d868758b86dab1823b25e14d70333f1dfa74da5ddaf6a06dba
case "$BASE_OS/$ARCH" in
ubuntu-24.04/x86_64)
  keyring="$(mktemp --suffix=.deb)"
  curl -fsSL --retry 5 -o "$keyring" \
    https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/cuda-keyring_1.1-1_all.deb
  echo "$CUDA_KEYRING_SHA256  $keyring" | sha256sum -c - || die "cuda-keyring checksum mismatch"
  dpkg -i "$keyring"
  rm -f "$keyring"
  apt-get "${apt_opts[@]}" update -q
  apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "$DCGM_PACKAGE"
  ;;
al2023/*) dnf install -y -q "$DCGM_PACKAGE" ;;
*) log "no DCGM for $BASE_OS/$ARCH: the GPU health gate runs without its diagnostic" ;;
esac
if systemctl cat nvidia-dcgm.service >/dev/null 2>&1; then
  systemctl enable nvidia-dcgm.service
fi

# Keeps the driver loaded between jobs (faster first CUDA call, stable nvidia-smi).
if systemctl cat nvidia-persistenced.service >/dev/null 2>&1; then
  systemctl enable nvidia-persistenced.service
fi

# Docker's `nvidia` runtime, made the default: container jobs get their GPUs through Compose
# device reservations (the toolkit's hook), and a container that only sets NVIDIA_VISIBLE_DEVICES
# (a job's own `docker run`, through the socket it is given) gets them too. nvidia-ctk merges into
# the daemon.json install.sh wrote (log rotation stays).
nvidia-ctk runtime configure --runtime=docker --set-as-default
systemctl restart docker.service
runtimes="$(docker info --format '{{json .Runtimes}}')"
grep -q '"nvidia"' <<<"$runtimes" || die "docker has no nvidia runtime after nvidia-ctk: $runtimes"
default_runtime="$(docker info --format '{{.DefaultRuntime}}')"
[ "$default_runtime" = nvidia ] || die "docker's default runtime is '$default_runtime', not nvidia"

# Build-time check: load the driver now (no reboot needed, the modules match the running kernel).
if grep -q '^nouveau ' /proc/modules; then
  modprobe -r nouveau || die "nouveau is loaded and cannot be unloaded"
fi
modprobe nvidia || die "the nvidia kernel module does not load on $KERNEL"
nvidia-smi || die "nvidia-smi failed"
log "done"
