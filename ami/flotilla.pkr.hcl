# Flotilla agent/scaler AMI (issue 7). HCL2 for Packer 1.6.6 (Debian's `packer` package): the
# amazon-ebs builder is built in, so there is no required_plugins block. See ami/README.md.
#
#   packer build -var base_os=ubuntu-24.04 -var gpu=true \
#     -var binaries_sha256=$(cat target/release/agent target/release/scaler | sha256sum | cut -c1-64) \
#     ami/flotilla.pkr.hcl

packer {
  required_version = ">= 1.6.6"
}

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "Region the builder instance runs in and the AMI is registered in."
}

variable "base_os" {
  type        = string
  default     = "ubuntu-24.04"
  description = "ubuntu-24.04 or al2023."
  validation {
    condition     = contains(["ubuntu-24.04", "al2023"], var.base_os)
    error_message = "The base_os must be ubuntu-24.04 or al2023."
  }
}

variable "arch" {
  type        = string
  default     = "x86_64"
  description = "x86_64 or arm64 (must match the binaries and the instance type)."
  validation {
    condition     = contains(["x86_64", "arm64"], var.arch)
    error_message = "The arch must be x86_64 or arm64."
  }
}

variable "gpu" {
  type        = bool
  default     = false
  description = "Build the GPU variant (NVIDIA driver, container toolkit, GPU self-test)."
}

variable "instance_type" {
  type        = string
  default     = ""
  description = "Builder instance type; empty picks one from gpu and arch (see local.instance_type)."
}

variable "volume_size" {
  type        = number
  default     = 40
  description = "Root volume size in GiB (gp3); also the AMI's default root volume size."
  validation {
    condition     = var.volume_size >= 16
    error_message = "The volume_size must be at least 16 GiB."
  }
}

variable "volume_throughput" {
  type        = number
  default     = 125
  description = "gp3 throughput in MiB/s (125..1000)."
}

variable "volume_iops" {
  type        = number
  default     = 3000
  description = "gp3 IOPS (3000..16000)."
}

variable "agent_binary" {
  type        = string
  default     = ""
  description = "Prebuilt Linux `agent` binary for arch; empty = target/release/agent of this repository."
}

variable "scaler_binary" {
  type        = string
  default     = ""
  description = "Prebuilt Linux `scaler` binary for arch; empty = target/release/scaler of this repository."
}

variable "binaries_sha256" {
  type        = string
  description = "sha256 of the agent binary followed by the scaler binary (cat agent scaler | sha256sum). Packer 1.6.6 cannot hash binary files itself (it has no filesha256/filebase64), so the caller passes it; it goes into the AMI name."
  validation {
    condition     = regex_replace(var.binaries_sha256, "^[0-9a-f]{64}$", "") == ""
    error_message = "The binaries_sha256 must be 64 lowercase hex digits: cat AGENT SCALER | sha256sum | cut -c1-64."
  }
}

variable "agent_version" {
  type        = string
  default     = ""
  description = "Version in the AMI name; empty = the workspace version from Cargo.toml."
  validation {
    condition     = var.agent_version == "" || (length(var.agent_version) <= 32 && regex_replace(var.agent_version, "^[0-9A-Za-z._-]+$", "") == "")
    error_message = "The agent_version must be at most 32 characters of A-Z a-z 0-9 . _ - (it goes into the AMI name)."
  }
}

variable "cuda_image" {
  type        = string
  default     = "nvidia/cuda:12.8.1-base-ubuntu24.04"
  description = "Image the GPU self-test runs `nvidia-smi` in (docker run --gpus all)."
}

variable "engine_images" {
  type        = list(string)
  default     = []
  description = "Images baked into the store of every container job's rootless engine (/var/lib/flotilla-images): a job whose images are here starts without a pull. The GPU variant adds cuda_image."
  validation {
    condition     = length([for image in var.engine_images : image if regex_replace(image, "^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", "") != ""]) == 0
    error_message = "Each of engine_images must be an image reference such as nvidia/cuda:12.8.1-base-ubuntu24.04."
  }
}

variable "toolbox_version" {
  type        = string
  default     = "v1.41.0"
  description = "Semaphore's toolbox release installed for the job user (checkout, cache, artifact, test-results, retry): a tag of github.com/semaphoreci/toolbox."
  validation {
    condition     = regex_replace(var.toolbox_version, "^v[0-9]+\\.[0-9]+\\.[0-9]+$", "") == ""
    error_message = "The toolbox_version must be a toolbox release tag such as v1.41.0."
  }
}

variable "toolbox_sha256" {
  type        = string
  description = "SHA-256 of that release's self-hosted-linux.tar (self-hosted-linux-arm.tar for arm64); the build fails on any other file. Required: pin it from the release you reviewed (curl -fsSL <asset URL> | sha256sum)."
  validation {
    condition     = regex_replace(var.toolbox_sha256, "^[0-9a-f]{64}$", "") == ""
    error_message = "The toolbox_sha256 must be 64 lowercase hex digits (sha256sum of the toolbox tarball)."
  }
}

variable "nvidia_driver_branch" {
  type        = string
  default     = "580"
  description = "NVIDIA driver branch (open kernel modules): Ubuntu nvidia-*-<branch>-server-open packages, AL2023 dnf module nvidia-driver:<branch>-open."
  validation {
    condition     = regex_replace(var.nvidia_driver_branch, "^[0-9]{3}$", "") == ""
    error_message = "The nvidia_driver_branch must be a driver branch number such as 580."
  }
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet for the builder instance (needs a route to the internet); empty = default VPC."
}

variable "force_deregister" {
  type        = bool
  default     = false
  description = "Replace an existing AMI of the same name (same version and content hash) and delete its snapshot."
}

locals {
  # Packer 1.6.6 resolves relative paths given to file()/fileset() against the template's
  # directory but path.root against the working directory: use absolute paths throughout.
  root = abspath(path.root)

  is_ubuntu = var.base_os == "ubuntu-24.04"

  # Base images: Canonical's Ubuntu 24.04 server images and Amazon's standard AL2023 images.
  source_owner = local.is_ubuntu ? "099720109477" : "amazon"
  source_name = (local.is_ubuntu
    ? "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-${var.arch == "arm64" ? "arm64" : "amd64"}-server-*"
  : "al2023-ami-2023.*-kernel-6.1-${var.arch}")
  ssh_username = local.is_ubuntu ? "ubuntu" : "ec2-user"
  root_device  = local.is_ubuntu ? "/dev/sda1" : "/dev/xvda"

  instance_type = (var.instance_type != "" ? var.instance_type
    : var.gpu ? (var.arch == "arm64" ? "g5g.xlarge" : "g5.xlarge")
  : (var.arch == "arm64" ? "c7g.large" : "c6i.large"))

  # Packer 1.6.6 has regex_replace but no regex(): keep only the [workspace.package] version.
  cargo_version = regex_replace(file("${local.root}/../Cargo.toml"),
  "(?s)^.*?\\n\\[workspace\\.package\\][^\\[]*?\\nversion\\s*=\\s*\"([^\"\\n]+)\".*$", "$1")
  agent_version = var.agent_version != "" ? var.agent_version : local.cargo_version

  agent_binary  = var.agent_binary != "" ? var.agent_binary : "${local.root}/../target/release/agent"
  scaler_binary = var.scaler_binary != "" ? var.scaler_binary : "${local.root}/../target/release/scaler"

  # Content hash: every text file under ami/ that ends up in the image or decides how it is built
  # (this template, scripts, units, CloudWatch template), plus the binaries' hash from the caller.
  content_files = sort(concat(
    ["flotilla.pkr.hcl", "cloudwatch-agent.json"],
    [for f in fileset(local.root, "scripts/*") : f],
    [for f in fileset(local.root, "systemd/*") : f],
  ))
  content_hash = substr(sha256(join("\n", concat(
    [for f in local.content_files : "${f} ${sha256(file("${local.root}/${f}"))}"],
    ["binaries ${var.binaries_sha256}", "base_os ${var.base_os}", "arch ${var.arch}", "gpu ${var.gpu}",
      "driver ${var.nvidia_driver_branch}", "cuda_image ${var.cuda_image}",
    "toolbox ${var.toolbox_version} ${var.toolbox_sha256}"],
  ))), 0, 12)

  variant  = var.gpu ? "gpu" : "cpu"
  ami_name = "flotilla-${local.agent_version}-${var.base_os}-${var.arch}-${local.variant}-${local.content_hash}"

  self_test = (var.gpu
    ? "sudo /usr/local/bin/agent self-test --engine-user flotilla-job --toolbox-user flotilla-job --gpu --docker-image '${var.cuda_image}'"
  : "sudo /usr/local/bin/agent self-test --engine-user flotilla-job --toolbox-user flotilla-job")

  install_env = [
    "FLOTILLA_BASE_OS=${var.base_os}",
    "FLOTILLA_ARCH=${var.arch}",
    "FLOTILLA_GPU=${var.gpu}",
    "FLOTILLA_NVIDIA_DRIVER_BRANCH=${var.nvidia_driver_branch}",
    "FLOTILLA_STAGING=/tmp/flotilla",
    "FLOTILLA_ENGINE_IMAGES=${join(" ", concat(var.engine_images, var.gpu ? [var.cuda_image] : []))}",
    "FLOTILLA_TOOLBOX_VERSION=${var.toolbox_version}",
    "FLOTILLA_TOOLBOX_SHA256=${var.toolbox_sha256}",
  ]

  tags = {
    Name                     = local.ami_name
    "flotilla:agent-version" = local.agent_version
    "flotilla:content-hash"  = local.content_hash
    "flotilla:base-os"       = var.base_os
    "flotilla:arch"          = var.arch
    "flotilla:gpu"           = var.gpu ? "true" : "false"
    "flotilla:source-ami"    = "{{ .SourceAMI }}"
  }
}

source "amazon-ebs" "flotilla" {
  region        = var.region
  instance_type = local.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = local.ssh_username
  ami_name      = local.ami_name

  ami_description       = "Flotilla ${local.agent_version} ${local.variant} agent/scaler image (${var.base_os}, ${var.arch})"
  ena_support           = true
  sriov_support         = true
  force_deregister      = var.force_deregister
  force_delete_snapshot = var.force_deregister

  source_ami_filter {
    owners      = [local.source_owner]
    most_recent = true
    filters = {
      name                = local.source_name
      architecture        = var.arch
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
  }

  launch_block_device_mappings {
    device_name           = local.root_device
    volume_size           = var.volume_size
    volume_type           = "gp3"
    throughput            = var.volume_throughput
    iops                  = var.volume_iops
    delete_on_termination = true
  }

  tags          = local.tags
  snapshot_tags = local.tags
  run_tags = {
    Name = "packer-${local.ami_name}"
  }
}

build {
  sources = ["source.amazon-ebs.flotilla"]

  # 0. IMDSv2 only on the builder, like on the fleet's instances. Packer 1.6.6's amazon-ebs has
  #    no metadata_options block, so the machine running packer sets it with the AWS CLI, and
  #    the instance checks that IMDSv1 is refused before anything else runs.
  provisioner "shell-local" {
    inline = [
      "aws ec2 modify-instance-metadata-options --region '${var.region}' --instance-id '${build.ID}' --http-tokens required --http-endpoint enabled --http-put-response-hop-limit 1 --output text",
    ]
  }

  provisioner "shell" {
    inline = [
      "for i in $(seq 30); do code=$(curl -s -o /dev/null -w '%%{http_code}' http://169.254.169.254/latest/meta-data/instance-id || true); [ \"$code\" = 401 ] && echo 'IMDSv1 refused (401): IMDSv2 is required' && exit 0; sleep 2; done; echo \"IMDSv1 still answers ($code)\" >&2; exit 1",
    ]
  }

  # 1. Bring the base image up to date, then reboot into the newest kernel so the NVIDIA
  #    modules (and everything else) are built for the kernel the AMI will boot.
  provisioner "shell" {
    script          = "${local.root}/scripts/upgrade.sh"
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
  }

  provisioner "shell" {
    inline            = ["sudo systemctl reboot"]
    expect_disconnect = true
    skip_clean        = true
  }

  # 2. Stage the files (binaries, units, scripts, CloudWatch template) under /tmp/flotilla.
  provisioner "shell" {
    pause_before = "30s"
    inline       = ["mkdir -p /tmp/flotilla/systemd /tmp/flotilla/scripts"]
  }

  provisioner "file" {
    source      = local.agent_binary
    destination = "/tmp/flotilla/agent"
  }

  provisioner "file" {
    source      = local.scaler_binary
    destination = "/tmp/flotilla/scaler"
  }

  provisioner "file" {
    source      = "${local.root}/systemd/"
    destination = "/tmp/flotilla/systemd"
  }

  provisioner "file" {
    source      = "${local.root}/scripts/"
    destination = "/tmp/flotilla/scripts"
  }

  provisioner "file" {
    source      = "${local.root}/cloudwatch-agent.json"
    destination = "/tmp/flotilla/cloudwatch-agent.json"
  }

  # 3. Install: user, Docker, binaries, units, log shipping, CloudWatch agent.
  provisioner "shell" {
    script           = "${local.root}/scripts/install.sh"
    environment_vars = local.install_env
    execute_command  = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
  }

  # 3b. Semaphore's toolbox for the job user (pinned release, SHA-256 checked).
  provisioner "shell" {
    script           = "${local.root}/scripts/install-toolbox.sh"
    environment_vars = local.install_env
    execute_command  = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
  }

  # 4. GPU variant: NVIDIA driver, container toolkit, docker runtime; checks nvidia-smi.
  provisioner "shell" {
    script           = "${local.root}/scripts/install-gpu.sh"
    environment_vars = local.install_env
    execute_command  = var.gpu ? "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}" : "echo 'CPU variant: install-gpu.sh skipped'"
  }

  # 4b. Images for the container jobs' rootless engines (pulled as flotilla-job).
  provisioner "shell" {
    script           = "${local.root}/scripts/bake-images.sh"
    environment_vars = local.install_env
    execute_command  = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
  }

  # 5. Make instances boot clean: cloud-init state, SSH host keys, machine id, logs, staging.
  provisioner "shell" {
    script          = "${local.root}/scripts/cleanup.sh"
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
  }

  # 6. Last: the agent checks the finished image (binary, units, IMDSv2; GPU: driver + docker).
  provisioner "shell" {
    inline = [local.self_test]
  }

  post-processor "manifest" {
    output     = "${local.root}/manifest.json"
    strip_path = true
    custom_data = {
      ami_name      = local.ami_name
      agent_version = local.agent_version
      content_hash  = local.content_hash
      base_os       = var.base_os
      arch          = var.arch
      gpu           = var.gpu ? "true" : "false"
    }
  }
}
