# Inputs of the Flotilla fleet module. Each variable is a parameter of
# infra/cloudformation/fleet.yaml in snake_case, with the same default and meaning
# (scaler/tests/it/infra_static.rs keeps them in step). The one addition is stack_name, which
# stands for CloudFormation's AWS::StackName.

variable "stack_name" {
  description = "Fleet name S: the SSM prefix is /flotilla/S and everything is tagged flotilla:stack = S (CloudFormation's stack name)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9-]{0,31}$", var.stack_name))
    error_message = "stack_name must start with a letter and hold up to 32 letters, digits and hyphens."
  }
}

# --- Queue and agents

variable "queue_endpoint" {
  description = "Base URL of the job queue the agents register with and the scaler polls, e.g. https://ORG.semaphoreci.com (https://host[:port], no path). Set this or plain_http_queue_endpoint, not both."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(https://[A-Za-z0-9.-]+(:[0-9]{1,5})?)?$", var.queue_endpoint))
    error_message = "queue_endpoint must be https://host[:port] without a path or trailing slash (a plain http:// queue goes in plain_http_queue_endpoint)."
  }
}

variable "plain_http_queue_endpoint" {
  description = "The queue's URL when it speaks plain HTTP only (http://host[:port], no path), in place of queue_endpoint: HTTPS is off, so the registration token and every job cross the network unencrypted. Only for a queue on a network you trust."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(http://[A-Za-z0-9.-]+(:[0-9]{1,5})?)?$", var.plain_http_queue_endpoint))
    error_message = "plain_http_queue_endpoint must be empty or http://host[:port] without a path or trailing slash."
  }
}

variable "agent_token_parameter" {
  description = "Name of the SSM SecureString parameter holding the agent type's registration token (\"\" = /flotilla/STACK/agent-token, created by `scaler deploy` or by you)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(/[A-Za-z0-9_./-]+)?$", var.agent_token_parameter))
    error_message = "agent_token_parameter must be empty or an SSM parameter name starting with /."
  }
}

variable "agent_type" {
  description = "Label of this fleet in the scaler's config and logs (\"\" = stack_name)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$", var.agent_type))
    error_message = "agent_type must be empty or up to 64 letters, digits, '_', '.', '-'."
  }
}

variable "idle_timeout" {
  description = "Seconds an agent may sit idle before it removes its instance (disconnect-after-idle-timeout; 0 = never)."
  type        = number
  default     = 300

  validation {
    condition     = var.idle_timeout >= 0
    error_message = "idle_timeout must be 0 or more."
  }
}

variable "keep_failed_instance_minutes" {
  description = "For debugging failed jobs: minutes an agent whose job failed keeps its instance before it terminates it (0 = never kept). The agent puts the instance into Standby (desired capacity decremented): it takes no job, is out of scale-in and of the scaler's reaper (max_instance_lifetime does not apply), and you can connect with Session Manager (enable_session_manager) to inspect the job. A kept instance costs what a running one does."
  type        = number
  default     = 0

  validation {
    condition     = var.keep_failed_instance_minutes >= 0 && var.keep_failed_instance_minutes <= 720
    error_message = "keep_failed_instance_minutes must be 0 to 720."
  }
}

# --- Image and instances

variable "image_id" {
  description = "AMI id of the Flotilla image (agents and scaler). Set this or image_id_parameter."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(ami-[0-9a-f]{8}([0-9a-f]{9})?)?$", var.image_id))
    error_message = "image_id must be empty or an AMI id (ami-...)."
  }
}

variable "image_id_parameter" {
  description = "Name of an SSM parameter holding the AMI id, read at plan/apply time. Set this or image_id."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([A-Za-z0-9_./-]+)?$", var.image_id_parameter))
    error_message = "image_id_parameter must be empty or an SSM parameter name."
  }
}

variable "instance_types" {
  description = "Agent instance types in priority order (1 to 10; GPU families welcome). All must share the AMI's architecture."
  type        = list(string)
  default     = ["g6.xlarge", "g5.xlarge"]

  validation {
    condition     = length(var.instance_types) >= 1 && length(var.instance_types) <= 10 && alltrue([for t in var.instance_types : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "instance_types must hold 1 to 10 instance types such as g6.xlarge."
  }
}

variable "root_volume_name" {
  description = "Root device name of the AMI (/dev/sda1 for Ubuntu, /dev/xvda for Amazon Linux); a wrong name adds a second, unused volume."
  type        = string
  default     = "/dev/sda1"

  validation {
    condition     = can(regex("^/dev/[a-z0-9]+$", var.root_volume_name))
    error_message = "root_volume_name must look like /dev/sda1."
  }
}

variable "root_volume_size" {
  description = "Agent root volume size in GiB (encrypted, deleted on termination)."
  type        = number
  default     = 100

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 16384
    error_message = "root_volume_size must be 8 to 16384 GiB."
  }
}

variable "root_volume_type" {
  description = "Agent root volume type."
  type        = string
  default     = "gp3"

  validation {
    condition     = contains(["gp3", "gp2", "io1", "io2"], var.root_volume_type)
    error_message = "root_volume_type must be gp3, gp2, io1 or io2."
  }
}

variable "root_volume_iops" {
  description = "Provisioned IOPS of the root volume (gp3, io1, io2; ignored for gp2)."
  type        = number
  default     = 3000

  validation {
    condition     = var.root_volume_iops >= 100 && var.root_volume_iops <= 256000
    error_message = "root_volume_iops must be 100 to 256000."
  }
}

variable "root_volume_throughput" {
  description = "Throughput of the root volume in MiB/s (gp3 only)."
  type        = number
  default     = 125

  validation {
    condition     = var.root_volume_throughput >= 125 && var.root_volume_throughput <= 2000
    error_message = "root_volume_throughput must be 125 to 2000 MiB/s."
  }
}

variable "key_name" {
  description = "EC2 key pair for the instances (\"\" = none). No inbound port is opened; reach instances through Session Manager (enable_session_manager) or a group in security_group_ids."
  type        = string
  default     = ""
}

# --- Capacity

variable "min_size" {
  description = "Minimum number of agent instances in the primary group."
  type        = number
  default     = 0

  validation {
    condition     = var.min_size >= 0
    error_message = "min_size must be 0 or more."
  }
}

variable "max_size" {
  description = "Maximum number of agent instances per group (primary and fallback each)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_size >= 1
    error_message = "max_size must be 1 or more."
  }
}

variable "spare_instances" {
  description = "Idle instances the scaler keeps ready beyond queued and running jobs."
  type        = number
  default     = 0

  validation {
    condition     = var.spare_instances >= 0
    error_message = "spare_instances must be 0 or more."
  }
}

variable "scheduled_minimums" {
  description = "Minimum instances by schedule, for the scaler: entries CRON@TIME_ZONE=MINIMUM separated by ';', e.g. \"* 8-18 * * MON-FRI@Europe/Berlin=2\" (\"\" = none)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[A-Za-z0-9 *,/?#@=;_+.:-]*$", var.scheduled_minimums))
    error_message = "scheduled_minimums holds CRON@TIME_ZONE=MINIMUM entries separated by ';' (no quotes)."
  }
}

variable "on_demand_base_capacity" {
  description = "On-demand instances the primary group launches before any spot instance."
  type        = number
  default     = 0

  validation {
    condition     = var.on_demand_base_capacity >= 0
    error_message = "on_demand_base_capacity must be 0 or more."
  }
}

variable "on_demand_percentage" {
  description = "Percentage of on-demand instances above the base capacity in the primary group (the rest is spot; 100 = no spot)."
  type        = number
  default     = 0

  validation {
    condition     = var.on_demand_percentage >= 0 && var.on_demand_percentage <= 100
    error_message = "on_demand_percentage must be 0 to 100."
  }
}

variable "spot_allocation_strategy" {
  description = "How the primary group chooses spot pools."
  type        = string
  default     = "price-capacity-optimized"

  validation {
    condition     = contains(["price-capacity-optimized", "capacity-optimized", "capacity-optimized-prioritized", "lowest-price"], var.spot_allocation_strategy)
    error_message = "spot_allocation_strategy must be price-capacity-optimized, capacity-optimized, capacity-optimized-prioritized or lowest-price."
  }
}

variable "fallback_pools" {
  description = "on-demand: a second group, 100% on-demand with the same instance types, that the scaler uses only when the primary group cannot launch. none: no second group."
  type        = string
  default     = "on-demand"

  validation {
    condition     = contains(["none", "on-demand"], var.fallback_pools)
    error_message = "fallback_pools must be none or on-demand."
  }
}

variable "enable_warm_pool" {
  description = "Keep warm_pool_size stopped, pre-booted instances for the primary group. Warm pools cannot be used with spot or several instance types: with true the primary group runs on-demand instances of the first instance type only (set on_demand_percentage to 100)."
  type        = bool
  default     = false
}

variable "warm_pool_size" {
  description = "Stopped instances the warm pool starts with and the most the scaler keeps in it (with enable_warm_pool; a scaler with `forecast: true` sizes it between 0 and this)."
  type        = number
  default     = 1

  validation {
    condition     = var.warm_pool_size >= 0
    error_message = "warm_pool_size must be 0 or more."
  }
}

# --- Instance lifecycle (enforced by the scaler's reaper)

variable "boot_deadline" {
  description = "Seconds an instance may run without a registered agent before the scaler's reaper removes it."
  type        = number
  default     = 900

  validation {
    condition     = var.boot_deadline >= 60
    error_message = "boot_deadline must be 60 or more."
  }
}

variable "max_instance_lifetime" {
  description = "Seconds after which the scaler's reaper retires an instance, busy or not: a hard cap above every job's time limit (default 6 h; 0 = never). The reaper marks the instance, then terminates it a pass later."
  type        = number
  default     = 21600

  validation {
    condition     = var.max_instance_lifetime >= 0
    error_message = "max_instance_lifetime must be 0 or more."
  }
}

# --- Network

variable "vpc_id" {
  description = "VPC for the instances (\"\" = the default VPC; then leave subnets empty)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(vpc-[0-9a-f]+)?$", var.vpc_id))
    error_message = "vpc_id must be empty or a VPC id."
  }
}

variable "subnets" {
  description = "Subnets of vpc_id for the instances, with outbound internet access ([] = the default VPC's subnets in every availability zone)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.subnets : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnets must be subnet ids."
  }
}

variable "security_group_ids" {
  description = "Extra security groups for agent instances, besides the module's egress-only group ([] = none)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.security_group_ids : can(regex("^sg-[0-9a-f]+$", s))])
    error_message = "security_group_ids must be security group ids."
  }
}

# --- Access, IAM and logs

variable "enable_session_manager" {
  description = "Shell access to the instances through Session Manager: grants both roles the Session Manager actions only (ssm:UpdateInstanceInformation, ssmmessages:*Channel), never AmazonSSMManagedInstanceCore, whose parameter reads on * would hand every job every parameter the account's keys let it decrypt."
  type        = bool
  default     = false
}

variable "require_vpc_endpoints" {
  description = "true: the agent role's credentials work only through interface VPC endpoints in the agents' own VPC, and only from the instance they were delivered to (aws:SourceVpc = aws:Ec2InstanceSourceVpc, aws:VpcSourceIp = aws:Ec2InstanceSourcePrivateIPv4), so credentials taken off an instance are refused everywhere else. Needs interface endpoints with private DNS for ssm, autoscaling, logs and sts in that VPC (and ssmmessages with enable_session_manager); without them the agents cannot even read their configuration."
  type        = bool
  default     = false
}

variable "managed_policy_arns" {
  description = "Extra managed policies for the agents' instance role, e.g. ECR read access."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for p in var.managed_policy_arns : can(regex("^arn:aws[a-z-]*:iam::(aws|[0-9]{12}):policy/[A-Za-z0-9+=,.@_/-]+$", p))])
    error_message = "managed_policy_arns must be IAM policy ARNs."
  }
}

variable "permissions_boundary_arn" {
  description = "Permissions boundary for every role the module creates (\"\" = none)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(arn:aws[a-z-]*:iam::(aws|[0-9]{12}):policy/[A-Za-z0-9+=,.@_/-]+)?$", var.permissions_boundary_arn))
    error_message = "permissions_boundary_arn must be empty or an IAM policy ARN."
  }
}

variable "kms_key_arn" {
  description = "ARN of an existing KMS key for the token parameter and the log groups (\"\" = the module creates one, alias/flotilla/STACK, with rotation on). A key given here must let the module's roles (outputs instance_role_arn, scaler_role_arn) decrypt through SSM and the CloudWatch Logs service use it for /flotilla/STACK/* log groups."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+)?$", var.kms_key_arn))
    error_message = "kms_key_arn must be empty or a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "cache_retention_days" {
  description = "Days the jobs' cache (the toolbox's `cache`, in the module's cache bucket) keeps an object before it expires."
  type        = number
  default     = 30

  validation {
    condition     = var.cache_retention_days >= 1 && var.cache_retention_days <= 3650
    error_message = "cache_retention_days must be between 1 and 3650."
  }
}

variable "job_ecr_repositories" {
  description = "ECR repositories of this account and region, by name (e.g. team/app; not ARNs; up to 10, as in the stack), that jobs may pull from and push to with the job role ([] = none). A name is lower-case letters, digits and ._/-, starting with a letter or digit, 2 to 256 characters. Adds ecr:GetAuthorizationToken (it has no resource) and the pull and push actions on these repositories only; the agent gives each job's session the same repositories."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.job_ecr_repositories) <= 10 && alltrue([for name in var.job_ecr_repositories : can(regex("^[a-z0-9][a-z0-9._/-]{1,255}$", name))])
    error_message = "job_ecr_repositories must hold up to 10 ECR repository names (lower-case letters, digits and ._/-, starting with a letter or digit, 2 to 256 characters)."
  }
}

variable "log_retention_days" {
  description = "Days to keep the module's CloudWatch logs."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a CloudWatch Logs retention value (1, 3, 5, 7, 14, 30, 60, 90, ... 3653)."
  }
}

# --- What a job may do on its instance (read at boot from /flotilla/STACK/job-*)

variable "job_sudo" {
  description = "Give the job user passwordless sudo. With sudo a job is root on its instance: it can read the agent's files and the instance role's credentials and stop the agent; one job per machine still holds, the sealing of the instance against its job does not."
  type        = bool
  default     = false
}

variable "job_docker_access" {
  description = "Put the job user in the docker group, and run container jobs on the machine's Docker. Membership of docker is root-equivalent (a container can mount the host's file system): the same trade as job_sudo. Off, each container job gets a rootless engine of its own, run as the job user."
  type        = bool
  default     = false
}

variable "metadata_hop_limit" {
  description = "HttpPutResponseHopLimit of the agents' instance metadata (IMDSv2). 1: IMDS answers never reach a container (docker bridge), on top of the image's firewall (only root and the agent's user reach 169.254.169.254; DOCKER-USER drops container traffic to it). 2 only for images that let containers reach the instance role on purpose."
  type        = number
  default     = 1

  validation {
    condition     = var.metadata_hop_limit >= 1 && var.metadata_hop_limit <= 64
    error_message = "metadata_hop_limit must be 1 to 64."
  }
}

# --- Monitoring: the scaler's EMF metrics (namespace Flotilla) on a dashboard, and alarms

variable "alarm_topic_arn" {
  description = "SNS topic the alarms notify (alarm and back to OK); \"\" = the alarms only change state (visible on the dashboard)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_.-]+)?$", var.alarm_topic_arn))
    error_message = "alarm_topic_arn must be empty or an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)."
  }
}

variable "queued_job_alarm_minutes" {
  description = "Alarm when the oldest queued job has waited longer than this many minutes."
  type        = number
  default     = 10

  validation {
    condition     = var.queued_job_alarm_minutes >= 1 && var.queued_job_alarm_minutes <= 1440
    error_message = "queued_job_alarm_minutes must be 1 to 1440."
  }
}

variable "short_capacity_alarm_minutes" {
  description = "Alarm when a pool has been short of capacity (failing to launch) for this many minutes."
  type        = number
  default     = 15

  validation {
    condition     = var.short_capacity_alarm_minutes >= 1 && var.short_capacity_alarm_minutes <= 1440
    error_message = "short_capacity_alarm_minutes must be 1 to 1440."
  }
}

# --- Scaler

variable "scaler_instance_type" {
  description = "Instance type of the scaler (one instance, on-demand, same AMI: same architecture as the agents, e.g. t4g.micro for arm64 images)."
  type        = string
  default     = "t3.micro"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.scaler_instance_type))
    error_message = "scaler_instance_type must be an instance type such as t3.micro."
  }
}
