# Inputs of the Flotilla hub module: the snake_case twins of infra/cloudformation/hub.yaml's
# parameters (same defaults and validations; scaler/tests/it/hub_stack_static.rs holds them in step),
# plus stack_name, which CloudFormation takes from the stack.

variable "stack_name" {
  description = "Name of the hub (CloudFormation: the stack's name): /flotilla/NAME/... secrets, parameters and log groups."
  type        = string
  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9-]{0,63}$", var.stack_name))
    error_message = "stack_name must be a letter, then letters, digits and dashes (at most 64)."
  }
}

# --- Network

variable "vpc_id" {
  description = "VPC of the hub instances, the database and the load balancer."
  type        = string
  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Private subnets of vpc_id (at least two availability zones) for the hub instances and the database's subnet group."
  type        = list(string)
  validation {
    condition     = alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "each subnet_ids entry must be a subnet id (subnet-...)."
  }
}

variable "load_balancer_subnet_ids" {
  description = "Subnets of vpc_id for the load balancer (at least two availability zones): public for an internet-facing one, private for an internal one."
  type        = list(string)
  validation {
    condition     = alltrue([for s in var.load_balancer_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "each load_balancer_subnet_ids entry must be a subnet id (subnet-...)."
  }
}

variable "load_balancer_scheme" {
  description = "internal (inside the VPC and peered networks, where fleets usually run) or internet-facing (from allowed_cidr on the internet)."
  type        = string
  default     = "internal"
  validation {
    condition     = contains(["internal", "internet-facing"], var.load_balancer_scheme)
    error_message = "load_balancer_scheme must be internal or internet-facing."
  }
}

variable "allowed_cidr" {
  description = "IPv4 range allowed to reach the load balancer on 443 (agents, scalers, the console's users). No default: say who may reach the hub."
  type        = string
  validation {
    condition     = can(regex("^([0-9]{1,3}\\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])$", var.allowed_cidr))
    error_message = "allowed_cidr must be an IPv4 CIDR such as 10.0.0.0/16."
  }
}

# --- HTTPS

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener; it must cover hub_domain_name."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[A-Za-z0-9-]+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "hub_domain_name" {
  description = "DNS name of the hub pointing at the load balancer (a record you make); used for queue_endpoint and the hub's public URL ('' = the load balancer's DNS name)."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+)?$", var.hub_domain_name))
    error_message = "hub_domain_name must be empty or a lower-case DNS name."
  }
}

# --- Hub instances

variable "image_id" {
  description = "AMI id of the Flotilla image (the same image as the fleet's; it carries `scaler`)."
  type        = string
  validation {
    condition     = can(regex("^ami-[0-9a-f]{8}([0-9a-f]{9})?$", var.image_id))
    error_message = "image_id must be an AMI id (ami-...)."
  }
}

variable "instance_type" {
  description = "Instance type of the hub instances (the image's architecture)."
  type        = string
  default     = "t3.small"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must be an instance type such as t3.small."
  }
}

variable "hub_instances" {
  description = "Hub instances (in several availability zones; 2 or more for no single point of failure)."
  type        = number
  default     = 2
  validation {
    condition     = var.hub_instances >= 1 && var.hub_instances <= 10
    error_message = "hub_instances must be between 1 and 10."
  }
}

variable "root_volume_name" {
  description = "Root device name of the AMI (/dev/sda1 for Ubuntu, /dev/xvda for Amazon Linux)."
  type        = string
  default     = "/dev/sda1"
  validation {
    condition     = can(regex("^/dev/[a-z0-9]+$", var.root_volume_name))
    error_message = "root_volume_name must be a device such as /dev/sda1."
  }
}

variable "root_volume_size" {
  description = "Root volume size of a hub instance in GiB (gp3, encrypted, deleted on termination)."
  type        = number
  default     = 20
  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 16384
    error_message = "root_volume_size must be between 8 and 16384."
  }
}

# --- Agent registration (the hub's default agent type)

variable "require_instance_identity" {
  description = "Agents of the default type must prove with AWS's signed instance identity document that they run on an EC2 instance of agent_account_ids in agent_regions; each instance registers once and its agent takes one job."
  type        = bool
  default     = true
}

variable "agent_account_ids" {
  description = "AWS accounts whose instances may register (12-digit ids; empty = this stack's account)."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for id in var.agent_account_ids : can(regex("^[0-9]{12}$", id))])
    error_message = "agent_account_ids are 12-digit AWS account ids."
  }
}

variable "agent_regions" {
  description = "Regions whose instances may register (empty = this stack's region)."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for region in var.agent_regions : can(regex("^[a-z0-9-]+$", region))])
    error_message = "agent_regions are region names such as eu-west-1."
  }
}

# --- Database

variable "database_engine_version" {
  description = "PostgreSQL major version (RDS picks the newest minor version and upgrades minors)."
  type        = string
  default     = "16"
  validation {
    condition     = contains(["16", "15"], var.database_engine_version)
    error_message = "database_engine_version must be 16 or 15."
  }
}

variable "database_instance_class" {
  description = "RDS instance class of the database."
  type        = string
  default     = "db.t4g.small"
  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.database_instance_class))
    error_message = "database_instance_class must be an RDS class such as db.t4g.small."
  }
}

variable "database_multi_az" {
  description = "A standby in a second availability zone that RDS fails over to."
  type        = bool
  default     = true
}

variable "database_allocated_storage" {
  description = "Database storage in GiB (gp3, encrypted)."
  type        = number
  default     = 20
  validation {
    condition     = var.database_allocated_storage >= 20 && var.database_allocated_storage <= 65536
    error_message = "database_allocated_storage must be between 20 and 65536."
  }
}

variable "database_backup_retention_days" {
  description = "Days of automated backups (and of point-in-time restore)."
  type        = number
  default     = 7
  validation {
    condition     = var.database_backup_retention_days >= 1 && var.database_backup_retention_days <= 35
    error_message = "database_backup_retention_days must be between 1 and 35."
  }
}

variable "database_deletion_protection" {
  description = "RDS deletion protection. Apply with false before destroying; the database then leaves a final snapshot."
  type        = bool
  default     = true
}

# --- Encryption and logs

variable "kms_key_arn" {
  description = "ARN of an existing KMS key for the secrets, the database and the log groups ('' = the module creates one, alias/flotilla/NAME, with rotation on)."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^(arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+)?$", var.kms_key_arn))
    error_message = "kms_key_arn must be empty or a KMS key ARN."
  }
}

variable "log_retention_days" {
  description = "Days to keep the hub's CloudWatch logs."
  type        = number
  default     = 30
  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs accepts."
  }
}
