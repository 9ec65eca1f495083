# Flotilla fleet: the Terraform twin of infra/cloudformation/fleet.yaml (same inputs, same
# resources, same configuration YAML). See README.md.

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

# The default VPC's zones when no subnets are given.
data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Without subnets the fleet uses every zone of the default VPC on purpose (CloudFormation's GetAZs ''): more zones mean more GPU capacity pools. Give subnets to pin zones.
  count = length(var.subnets) == 0 ? 1 : 0
  state = "available"
}

# image_id_parameter is read at plan/apply time (CloudFormation: a dynamic reference resolved on
# each stack create/update).
data "aws_ssm_parameter" "image" {
  count = var.image_id_parameter != "" ? 1 : 0
  name  = var.image_id_parameter
}

locals {
  prefix          = "/flotilla/${var.stack_name}"
  token_parameter = var.agent_token_parameter != "" ? var.agent_token_parameter : "${local.prefix}/agent-token"
  image_id        = var.image_id_parameter != "" ? nonsensitive(data.aws_ssm_parameter.image[0].value) : var.image_id
  fleet_name      = var.agent_type != "" ? var.agent_type : var.stack_name
  # A plain-HTTP queue only through the variable that says so (queue_endpoint takes https://).
  plain_http     = var.plain_http_queue_endpoint != ""
  queue_endpoint = local.plain_http ? var.plain_http_queue_endpoint : var.queue_endpoint
  use_fallback   = var.fallback_pools == "on-demand"

  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id
  url_suffix = data.aws_partition.current.dns_suffix

  ssm_arn_prefix = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter"
  token_arn      = "${local.ssm_arn_prefix}${local.token_parameter}"
  # The agent groups by name (their ARNs hold a generated id): both roles act on these only.
  agent_group_arns = [
    for name in ["flotilla-${var.stack_name}-agent", "flotilla-${var.stack_name}-agent-fallback"] :
    "arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/${name}"
  ]
  account_root     = "arn:${local.partition}:iam::${local.account_id}:root"
  ssm_service      = "ssm.${local.region}.${local.url_suffix}"
  kms_key_arn      = var.kms_key_arn != "" ? var.kms_key_arn : aws_kms_key.this[0].arn
  zones            = length(var.subnets) == 0 ? data.aws_availability_zones.available[0].names : null
  subnets          = length(var.subnets) == 0 ? null : var.subnets
  agent_group_list = concat([aws_autoscaling_group.agent.name], aws_autoscaling_group.fallback[*].name)

  # job_ecr_repositories: the registry's login token (GetAuthorizationToken has no resource type),
  # then pull and push on the named repositories of this account and region only; no statement
  # when the list is empty.
  job_ecr_statements = [
    for statement in [
      {
        Sid      = "EcrLogin"
        Effect   = "Allow"
        Action   = "ecr:GetAuthorizationToken"
        Resource = "*"
      },
      {
        Sid    = "EcrPullAndPush"
        Effect = "Allow"
        Action = [
          "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
          "ecr:DescribeImages", "ecr:ListImages", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
          "ecr:CompleteLayerUpload", "ecr:PutImage",
        ]
        Resource = [
          for name in var.job_ecr_repositories :
          "arn:${local.partition}:ecr:${local.region}:${local.account_id}:repository/${name}"
        ]
      },
    ] : statement if length(var.job_ecr_repositories) > 0
  ]

  tags = { "flotilla:stack" = var.stack_name }

  group_metrics = [
    "GroupMinSize",
    "GroupMaxSize",
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupStandbyInstances",
    "GroupTerminatingInstances",
    "GroupTotalInstances",
  ]

  # The agent reads this YAML at boot (keys are Semaphore agent options); no secrets in it.
  agent_config = <<-EOT
    endpoint: ${trimprefix(local.queue_endpoint, local.plain_http ? "http://" : "https://")}
    no-https: ${local.plain_http}
    token-ssm-parameter: ${local.token_parameter}
    disconnect-after-idle-timeout: ${var.idle_timeout}
    job-role-arn: ${aws_iam_role.job.arn}
    job-role-stack: ${var.stack_name}
    job-role-agent-type: ${local.fleet_name}
    cache-bucket: ${aws_s3_bucket.cache.id}
    job-ecr-repositories: '${join(" ", var.job_ecr_repositories)}'
    keep-failed-instance-minutes: ${var.keep_failed_instance_minutes}
  EOT

  # `scaler run` on the scaler instance reads this YAML.
  scaler_config = <<-EOT
    metrics_listen: 127.0.0.1:9091
    fleets:
      - agent_type: ${local.fleet_name}
        queue:
          endpoint: ${local.queue_endpoint}
          token_ssm_parameter: ${local.token_parameter}
        aws:
          groups: [${join(", ", local.agent_group_list)}]
        policy:
          spare: ${var.spare_instances}
          scheduled_minimums: "${var.scheduled_minimums}"
        reaper:
          boot_deadline_seconds: ${var.boot_deadline}
          max_lifetime_seconds: ${var.max_instance_lifetime}
  EOT
}

# ---------------------------------------------------------------- encryption (KMS)
# The module's own key (unless kms_key_arn names one) for the registration token, a SecureString
# put once the module is applied, and for the log groups. Only the module's roles may decrypt with
# it, only through SSM and only the token; the account administers the key but cannot decrypt with
# it; CloudWatch Logs may use it for the module's log groups only.
# https://docs.aws.amazon.com/kms/latest/developerguide/key-policy-default.html
# https://docs.aws.amazon.com/systems-manager/latest/userguide/secure-string-parameter-kms-encryption.html
# https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/encrypt-log-data-kms.html

resource "aws_kms_key" "this" {
  count = var.kms_key_arn == "" ? 1 : 0

  description         = "Flotilla ${var.stack_name} - registration token and logs"
  enable_key_rotation = true
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # Without it nobody could manage (or delete) the key; no use of the key is in it.
        Sid       = "AccountAdministersTheKey"
        Effect    = "Allow"
        Principal = { AWS = local.account_root }
        Action = [
          # CreateAlias, not Create*: kms:CreateGrant would let a grantee use the key outside
          # this policy's conditions.
          "kms:CreateAlias", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
          "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
          "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
          "kms:RotateKeyOnDemand",
        ]
        Resource = "*"
      },
      {
        # Whoever puts the token (with IAM rights to encrypt) may.
        Sid       = "AccountStoresTheTokenThroughSsm"
        Effect    = "Allow"
        Principal = { AWS = local.account_root }
        Action    = ["kms:Encrypt", "kms:GenerateDataKey"]
        Resource  = "*"
        Condition = {
          StringEquals = {
            "kms:ViaService"                      = local.ssm_service
            "kms:EncryptionContext:PARAMETER_ARN" = local.token_arn
          }
        }
      },
      {
        # The two roles by ARN (a condition rather than role principals, which KMS refuses while
        # a new role is still propagating).
        Sid       = "StackRolesReadTheTokenThroughSsm"
        Effect    = "Allow"
        Principal = { AWS = local.account_root }
        Action    = "kms:Decrypt"
        Resource  = "*"
        Condition = {
          ArnEquals = { "aws:PrincipalArn" = [aws_iam_role.instance.arn, aws_iam_role.scaler.arn] }
          StringEquals = {
            "kms:ViaService"                      = local.ssm_service
            "kms:EncryptionContext:PARAMETER_ARN" = local.token_arn
          }
        }
      },
      {
        # The job role uses the key only through S3, for the cache bucket (its IAM policy names
        # the bucket).
        Sid       = "JobRoleUsesTheKeyThroughS3"
        Effect    = "Allow"
        Principal = { AWS = local.account_root }
        Action    = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource  = "*"
        Condition = {
          ArnEquals    = { "aws:PrincipalArn" = aws_iam_role.job.arn }
          StringEquals = { "kms:ViaService" = "s3.${local.region}.${local.url_suffix}" }
        }
      },
      {
        Sid       = "LogsEncryptTheStacksLogGroups"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.${local.url_suffix}" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.prefix}/*"
          }
        }
      },
    ]
  })
  tags = local.tags
}

resource "aws_kms_alias" "this" {
  count = var.kms_key_arn == "" ? 1 : 0

  name          = "alias/flotilla/${var.stack_name}"
  target_key_id = aws_kms_key.this[0].key_id
}

# ---------------------------------------------------------------- logs

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_338:Retention is an input (log_retention_days, default 30 like the CloudFormation stack); a year of CI logs is a cost most fleets do not want.
  for_each = toset(["agent", "scaler", "system"])

  name              = "${local.prefix}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.kms_key_arn
  tags              = local.tags
}

# ---------------------------------------------------------------- configuration (SSM)

resource "aws_ssm_parameter" "agent_config" {
  #checkov:skip=CKV2_AWS_34:Plain configuration without secrets (the token lives in its own SecureString); the instance's boot reads it as a String parameter by contract.
  name        = "${local.prefix}/agent-config"
  description = "Flotilla agent configuration (YAML)"
  type        = "String"
  tier        = "Standard"
  value       = local.agent_config
  tags        = local.tags
}

resource "aws_ssm_parameter" "scaler_config" {
  #checkov:skip=CKV2_AWS_34:Plain configuration without secrets (the token lives in its own SecureString); the scaler reads it as a String parameter by contract.
  name        = "${local.prefix}/scaler-config"
  description = "Flotilla scaler configuration (YAML)"
  type        = "String"
  tier        = "Standard"
  value       = local.scaler_config
  tags        = local.tags
}

# What the job user may do, read by the image's flotilla-seal at boot with the agent role
# ("true" or "false"; missing or unreadable means "false").
resource "aws_ssm_parameter" "job" {
  #checkov:skip=CKV2_AWS_34:Plain "true"/"false" settings without secrets; the image's boot reads them as String parameters by contract.
  for_each = {
    job-sudo   = { value = var.job_sudo, description = "Whether the job user has passwordless sudo (job_sudo)" }
    job-docker = { value = var.job_docker_access, description = "Whether the job user is in the docker group (job_docker_access)" }
  }

  name        = "${local.prefix}/${each.key}"
  description = each.value.description
  type        = "String"
  tier        = "Standard"
  value       = tostring(each.value.value)
  tags        = local.tags
}

# ---------------------------------------------------------------- network

resource "aws_security_group" "instances" {
  #checkov:skip=CKV_AWS_382:CI jobs reach arbitrary hosts (package mirrors, registries, git over SSH, the queue); outbound is open by design. There is no inbound rule at all.
  name        = "flotilla-${var.stack_name}-instances"
  description = "Flotilla ${var.stack_name} instances - no inbound, all outbound"
  vpc_id      = var.vpc_id != "" ? var.vpc_id : null

  egress {
    description = "All outbound IPv4 (jobs, queue, AWS APIs)"
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description      = "All outbound IPv6 (jobs, queue, AWS APIs)"
    protocol         = "-1"
    from_port        = 0
    to_port          = 0
    ipv6_cidr_blocks = ["::/0"]
  }

  tags = merge(local.tags, { Name = "${var.stack_name}-instances" })
}

# ---------------------------------------------------------------- IAM: agent instances

resource "aws_iam_role" "instance" {
  name                 = "flotilla-${var.stack_name}-agent"
  description          = "Flotilla ${var.stack_name} agent instances"
  permissions_boundary = var.permissions_boundary_arn != "" ? var.permissions_boundary_arn : null
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.${local.url_suffix}" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = merge(local.tags, { "flotilla:role" = "agent" })
}

# What IAM cannot express here (no instance-id condition for Auto Scaling, per-instance log
# streams) is written down in docs/aws-contract.md, "What IAM cannot express".
resource "aws_iam_role_policy" "agent" {
  name = "flotilla-agent"
  role = aws_iam_role.instance.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid    = "ReadConfigAndToken"
        Effect = "Allow"
        Action = "ssm:GetParameter"
        Resource = concat(
          [for name in ["agent-config", "job-sudo", "job-docker"] : "${local.ssm_arn_prefix}${local.prefix}/${name}"],
          [local.token_arn],
        )
      },
      {
        Sid      = "DecryptTokenThroughSsm"
        Effect   = "Allow"
        Action   = "kms:Decrypt"
        Resource = local.kms_key_arn
        Condition = {
          StringEquals = {
            "kms:ViaService"                      = "ssm.${local.region}.${local.url_suffix}"
            "kms:EncryptionContext:PARAMETER_ARN" = local.token_arn
          }
        }
      },
      {
        # Only the module's agent groups, only with a session EC2 made for an instance
        # (ec2:SourceInstanceARN is a property of the session: it travels with credentials copied
        # off the instance; require_vpc_endpoints is what keeps them there). Auto Scaling has no
        # instance-id condition key, so this cannot be narrowed to the caller's own instance.
        # EnterStandby: with keep_failed_instance_minutes, a failed job's instance waits in Standby.
        Sid      = "RemoveOwnInstance"
        Effect   = "Allow"
        Action   = ["autoscaling:TerminateInstanceInAutoScalingGroup", "autoscaling:SetInstanceHealth", "autoscaling:EnterStandby"]
        Resource = local.agent_group_arns
        Condition = {
          StringEquals = {
            "autoscaling:ResourceTag/flotilla:stack" = var.stack_name
            "autoscaling:ResourceTag/flotilla:role"  = "agent"
          }
          Null = { "ec2:SourceInstanceARN" = "false" }
        }
      },
      {
        # keep_failed_instance_minutes: EnterStandby needs the instance's group, which only this
        # read-only call names (it takes no resource).
        Sid       = "FindOwnGroup"
        Effect    = "Allow"
        Action    = "autoscaling:DescribeAutoScalingInstances"
        Resource  = "*"
        Condition = { Null = { "ec2:SourceInstanceARN" = "false" } }
      },
      {
        # GPU faults: the agent tags its instance before removing it; the scaler reads the tag.
        # That one tag on the stack's instances (no key narrows it to the caller's own).
        Sid      = "TagOwnFault"
        Effect   = "Allow"
        Action   = "ec2:CreateTags"
        Resource = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"
        Condition = {
          StringEquals                = { "aws:ResourceTag/flotilla:stack" = var.stack_name }
          "ForAllValues:StringEquals" = { "aws:TagKeys" = ["flotilla:fault"] }
          Null                        = { "ec2:SourceInstanceARN" = "false" }
        }
      },
      {
        Sid      = "WriteOwnLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
        Resource = ["${aws_cloudwatch_log_group.this["agent"].arn}:*", "${aws_cloudwatch_log_group.this["system"].arn}:*"]
      },
      {
        # Each job's credentials (agent/src/job_role/): the job role only, tagged sessions.
        Sid      = "AssumeTheJobRole"
        Effect   = "Allow"
        Action   = ["sts:AssumeRole", "sts:TagSession"]
        Resource = aws_iam_role.job.arn
      },
    ]
  })
}

# require_vpc_endpoints: the agent role's credentials work only on their instance, with AWS's
# documented pair of statements (docs/aws-contract.md, "Where the agent role's credentials work"):
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html#condition-keys-ec2instancesourceprivateip4
# aws:SourceVpc and aws:VpcSourceIp exist only through a VPC endpoint, so a call to a public
# endpoint is refused too; calls services make for the agent (KMS through SSM) are not affected.
# A policy of its own, as in the stack (a Deny binds the whole role).
resource "aws_iam_role_policy" "agent_vpc_endpoints" {
  count = var.require_vpc_endpoints ? 1 : 0

  name = "flotilla-agent-vpc-endpoints"
  role = aws_iam_role.instance.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "OnlyThroughOwnVpcEndpoints"
        Effect   = "Deny"
        Action   = "*"
        Resource = "*"
        Condition = {
          StringNotEquals = { "aws:Ec2InstanceSourceVpc" = "$${aws:SourceVpc}" }
          Null            = { "ec2:SourceInstanceARN" = "false" }
          BoolIfExists    = { "aws:ViaAWSService" = "false" }
        }
      },
      {
        Sid      = "OnlyFromOwnAddress"
        Effect   = "Deny"
        Action   = "*"
        Resource = "*"
        Condition = {
          StringNotEquals = { "aws:Ec2InstanceSourcePrivateIPv4" = "$${aws:VpcSourceIp}" }
          Null            = { "ec2:SourceInstanceARN" = "false" }
          BoolIfExists    = { "aws:ViaAWSService" = "false" }
        }
      },
    ]
  })
}

resource "aws_iam_role_policy_attachment" "instance" {
  for_each = toset(var.managed_policy_arns)

  role       = aws_iam_role.instance.name
  policy_arn = each.value
}

resource "aws_iam_instance_profile" "instance" {
  name = "flotilla-${var.stack_name}-agent"
  role = aws_iam_role.instance.name
  tags = local.tags
}

# ---------------------------------------------------------------- the jobs' role and cache
# What a job may do in AWS (issue 26): the agent assumes this role for each job and serves the
# credentials to the job alone (docs/aws-contract.md, "Job credentials"); only the agent role may
# assume it. Its policy: the cache bucket's objects and the module's key through S3, and with
# job_ecr_repositories pull and push on those ECR repositories; nothing else.

resource "aws_iam_role" "job" {
  name                 = "flotilla-${var.stack_name}-job"
  description          = "Flotilla ${var.stack_name} jobs (assumed by the agent for each job)"
  max_session_duration = 3600
  permissions_boundary = var.permissions_boundary_arn != "" ? var.permissions_boundary_arn : null
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { AWS = aws_iam_role.instance.arn }
      Action    = ["sts:AssumeRole", "sts:TagSession"]
    }]
  })
  tags = merge(local.tags, { "flotilla:role" = "job" })
}

resource "aws_iam_role_policy" "job" {
  name = "flotilla-job"
  role = aws_iam_role.job.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat([
      {
        Sid      = "CacheObjects"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
        Resource = "${aws_s3_bucket.cache.arn}/*"
      },
      {
        Sid      = "CacheListing"
        Effect   = "Allow"
        Action   = "s3:ListBucket"
        Resource = aws_s3_bucket.cache.arn
      },
      {
        Sid      = "CacheKeyThroughS3"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = local.kms_key_arn
        Condition = {
          StringEquals = { "kms:ViaService" = "s3.${local.region}.${local.url_suffix}" }
          ArnLike      = { "kms:EncryptionContext:aws:s3:arn" = aws_s3_bucket.cache.arn }
        }
      },
    ], local.job_ecr_statements)
  })
}

# The toolbox's `cache` (SEMAPHORE_CACHE_BACKEND=s3): the module's key, no public access, TLS
# only, objects gone after cache_retention_days (replaced versions after a day).
resource "aws_s3_bucket" "cache" {
  #checkov:skip=CKV_AWS_18:Access logs would need a second bucket (and that one its own); the jobs' requests are attributable in CloudTrail, each by a session named after its job.
  #checkov:skip=CKV_AWS_144:A cache is rebuilt by the next job; copying it to a second region would cost more than losing it.
  #checkov:skip=CKV2_AWS_62:Nothing consumes events of a cache.
  bucket_prefix = "flotilla-${lower(var.stack_name)}-cache-"
  force_destroy = true
  tags          = local.tags
}

resource "aws_s3_bucket_server_side_encryption_configuration" "cache" {
  bucket = aws_s3_bucket.cache.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = local.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "cache" {
  bucket                  = aws_s3_bucket.cache.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "cache" {
  bucket = aws_s3_bucket.cache.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "cache" {
  bucket = aws_s3_bucket.cache.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "cache" {
  bucket = aws_s3_bucket.cache.id
  rule {
    id     = "ExpireTheCache"
    status = "Enabled"
    filter {}
    expiration {
      days = var.cache_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

resource "aws_s3_bucket_policy" "cache" {
  bucket = aws_s3_bucket.cache.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "TlsOnly"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.cache.arn, "${aws_s3_bucket.cache.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
}

# ---------------------------------------------------------------- IAM: scaler

resource "aws_iam_role" "scaler" {
  name                 = "flotilla-${var.stack_name}-scaler"
  description          = "Flotilla ${var.stack_name} scaler instance"
  permissions_boundary = var.permissions_boundary_arn != "" ? var.permissions_boundary_arn : null
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.${local.url_suffix}" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = merge(local.tags, { "flotilla:role" = "scaler" })
}

resource "aws_iam_role_policy" "scaler" {
  name = "flotilla-scaler"
  role = aws_iam_role.scaler.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ReadConfigAndToken"
        Effect   = "Allow"
        Action   = "ssm:GetParameter"
        Resource = ["${local.ssm_arn_prefix}${local.prefix}/scaler-config", local.token_arn]
      },
      {
        Sid      = "DecryptTokenThroughSsm"
        Effect   = "Allow"
        Action   = "kms:Decrypt"
        Resource = local.kms_key_arn
        Condition = {
          StringEquals = {
            "kms:ViaService"                      = "ssm.${local.region}.${local.url_suffix}"
            "kms:EncryptionContext:PARAMETER_ARN" = local.token_arn
          }
        }
      },
      {
        Sid      = "Observe"
        Effect   = "Allow"
        Action   = ["autoscaling:Describe*", "ec2:DescribeInstances"]
        Resource = "*"
      },
      {
        Sid      = "ScaleOwnAgentGroups"
        Effect   = "Allow"
        Action   = ["autoscaling:SetDesiredCapacity", "autoscaling:SuspendProcesses", "autoscaling:TerminateInstanceInAutoScalingGroup", "autoscaling:PutWarmPool"]
        Resource = local.agent_group_arns
        Condition = {
          StringEquals = {
            "autoscaling:ResourceTag/flotilla:stack" = var.stack_name
            "autoscaling:ResourceTag/flotilla:role"  = "agent"
          }
        }
      },
      {
        Sid      = "MarkOwnInstances"
        Effect   = "Allow"
        Action   = ["ec2:CreateTags", "ec2:DeleteTags"]
        Resource = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"
        Condition = {
          StringEquals                   = { "aws:ResourceTag/flotilla:stack" = var.stack_name }
          "ForAllValues:StringLike"      = { "aws:TagKeys" = ["flotilla:*"] }
          "ForAllValues:StringNotEquals" = { "aws:TagKeys" = ["flotilla:stack", "flotilla:role", "flotilla:pool"] }
        }
      },
      {
        Sid      = "WriteOwnLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
        Resource = ["${aws_cloudwatch_log_group.this["scaler"].arn}:*", "${aws_cloudwatch_log_group.this["system"].arn}:*"]
      },
    ]
  })
}

resource "aws_iam_instance_profile" "scaler" {
  name = "flotilla-${var.stack_name}-scaler"
  role = aws_iam_role.scaler.name
  tags = local.tags
}

# ---------------------------------------------------------------- IAM: Session Manager (opt-in)
# The actions a Session Manager shell needs and no more (AmazonSSMManagedInstanceCore would add
# ssm:GetParameter(s) on *):
# https://docs.aws.amazon.com/systems-manager/latest/userguide/getting-started-create-iam-instance-profile.html

resource "aws_iam_role_policy" "session_manager" {
  for_each = var.enable_session_manager ? { agent = aws_iam_role.instance.id, scaler = aws_iam_role.scaler.id } : {}

  name = "flotilla-session-manager"
  role = each.value
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # An instance registers itself with Systems Manager.
        Sid      = "RegisterInstance"
        Effect   = "Allow"
        Action   = "ssm:UpdateInstanceInformation"
        Resource = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"
      },
      {
        # ssmmessages has no resource types: "*" is all it takes.
        Sid    = "SessionChannels"
        Effect = "Allow"
        Action = [
          "ssmmessages:CreateControlChannel",
          "ssmmessages:CreateDataChannel",
          "ssmmessages:OpenControlChannel",
          "ssmmessages:OpenDataChannel",
        ]
        Resource = "*"
      },
    ]
  })
}

# ---------------------------------------------------------------- launch templates

resource "aws_launch_template" "agent" {
  name        = "flotilla-${var.stack_name}-agent"
  description = "Flotilla ${var.stack_name} agents"

  image_id = local.image_id
  # The default type; the groups' mixed instances policy overrides it with instance_types.
  instance_type                        = var.instance_types[0]
  key_name                             = var.key_name != "" ? var.key_name : null
  vpc_security_group_ids               = concat([aws_security_group.instances.id], var.security_group_ids)
  instance_initiated_shutdown_behavior = "terminate"
  user_data                            = base64encode("FLOTILLA_AGENT_CONFIG_PARAMETER=${aws_ssm_parameter.agent_config.name}")

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance.arn
  }

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
    # 1 by default: IMDS answers never reach a container (metadata_hop_limit).
    http_put_response_hop_limit = var.metadata_hop_limit
    # No IPv6 metadata endpoint (fd00:ec2::254): one address to seal, not two.
    http_protocol_ipv6     = "disabled"
    instance_metadata_tags = "disabled"
  }

  block_device_mappings {
    device_name = var.root_volume_name

    ebs {
      volume_size           = var.root_volume_size
      volume_type           = var.root_volume_type
      iops                  = var.root_volume_type != "gp2" ? var.root_volume_iops : null
      throughput            = var.root_volume_type == "gp3" ? var.root_volume_throughput : null
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { "flotilla:role" = "agent" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { "flotilla:role" = "agent", Name = "${var.stack_name}-agent" })
  }

  tags = merge(local.tags, { "flotilla:role" = "agent" })

  lifecycle {
    precondition {
      condition     = (var.image_id == "") != (var.image_id_parameter == "")
      error_message = "Set exactly one of image_id and image_id_parameter."
    }
    precondition {
      condition     = (var.queue_endpoint == "") != (var.plain_http_queue_endpoint == "")
      error_message = "Set exactly one of queue_endpoint (https://) and plain_http_queue_endpoint (http://)."
    }
    precondition {
      condition     = (var.vpc_id == "") == (length(var.subnets) == 0)
      error_message = "Give vpc_id and subnets together, or neither (the default VPC)."
    }
    precondition {
      condition     = !var.enable_warm_pool || var.on_demand_percentage == 100
      error_message = "A warm pool needs on-demand instances (on_demand_percentage = 100)."
    }
  }
}

resource "aws_launch_template" "scaler" {
  name        = "flotilla-${var.stack_name}-scaler"
  description = "Flotilla ${var.stack_name} scaler"

  image_id               = local.image_id
  instance_type          = var.scaler_instance_type
  key_name               = var.key_name != "" ? var.key_name : null
  vpc_security_group_ids = [aws_security_group.instances.id]
  user_data              = base64encode("FLOTILLA_SCALER_CONFIG_PARAMETER=${aws_ssm_parameter.scaler_config.name}")
  # No block_device_mappings: the scaler keeps the image's root volume as it is (size, and
  # encryption from the image's snapshot or the account's EBS default).

  iam_instance_profile {
    arn = aws_iam_instance_profile.scaler.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    http_protocol_ipv6          = "disabled"
    instance_metadata_tags      = "disabled"
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { "flotilla:role" = "scaler" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { "flotilla:role" = "scaler", Name = "${var.stack_name}-scaler" })
  }

  tags = merge(local.tags, { "flotilla:role" = "scaler" })
}

# ---------------------------------------------------------------- Auto Scaling groups
# The scaler only raises desired capacity; each agent removes its own instance (with decrement)
# after its job. desired_capacity is left unset so applies never reset it.

resource "aws_autoscaling_group" "agent" {
  name                      = "flotilla-${var.stack_name}-agent"
  min_size                  = var.min_size
  max_size                  = var.max_size
  availability_zones        = local.zones
  vpc_zone_identifier       = local.subnets
  health_check_type         = "EC2"
  protect_from_scale_in     = true
  capacity_rebalance        = false
  metrics_granularity       = "1Minute"
  enabled_metrics           = local.group_metrics
  wait_for_capacity_timeout = "0"

  # A warm pool cannot serve a mixed instances policy: then the group launches the launch
  # template's type (the first of instance_types) on demand.
  dynamic "launch_template" {
    for_each = var.enable_warm_pool ? [1] : []
    content {
      id      = aws_launch_template.agent.id
      version = aws_launch_template.agent.latest_version
    }
  }

  dynamic "mixed_instances_policy" {
    for_each = var.enable_warm_pool ? [] : [1]
    content {
      instances_distribution {
        on_demand_allocation_strategy            = "prioritized"
        on_demand_base_capacity                  = var.on_demand_base_capacity
        on_demand_percentage_above_base_capacity = var.on_demand_percentage
        spot_allocation_strategy                 = var.spot_allocation_strategy
      }
      launch_template {
        launch_template_specification {
          launch_template_id = aws_launch_template.agent.id
          version            = aws_launch_template.agent.latest_version
        }
        dynamic "override" {
          for_each = var.instance_types
          content {
            instance_type = override.value
          }
        }
      }
    }
  }

  dynamic "warm_pool" {
    for_each = var.enable_warm_pool ? [1] : []
    content {
      # min_size = max_group_prepared_capacity: the pool holds warm_pool_size instances whatever
      # the group's desired capacity.
      pool_state                  = "Stopped"
      min_size                    = var.warm_pool_size
      max_group_prepared_capacity = var.warm_pool_size
      # Instances run one job: never return one to the pool.
      instance_reuse_policy {
        reuse_on_scale_in = false
      }
    }
  }

  tag {
    key                 = "flotilla:stack"
    value               = var.stack_name
    propagate_at_launch = true
  }
  tag {
    key                 = "flotilla:role"
    value               = "agent"
    propagate_at_launch = true
  }
  tag {
    key                 = "flotilla:pool"
    value               = "primary"
    propagate_at_launch = true
  }
  tag {
    key                 = "Name"
    value               = "${var.stack_name}-agent"
    propagate_at_launch = true
  }
  # The largest warm pool the scaler may keep (it sizes the pool from its forecast).
  tag {
    key                 = "flotilla:warm-pool-max"
    value               = tostring(var.warm_pool_size)
    propagate_at_launch = false
  }

  depends_on = [aws_iam_role_policy.agent, aws_cloudwatch_log_group.this]
}

# Spill-over pool: 100% on-demand, same types. Only the scaler raises it, when the primary group
# cannot launch (no spot capacity, insufficient capacity).
resource "aws_autoscaling_group" "fallback" {
  count = local.use_fallback ? 1 : 0

  name                      = "flotilla-${var.stack_name}-agent-fallback"
  min_size                  = 0
  max_size                  = var.max_size
  availability_zones        = local.zones
  vpc_zone_identifier       = local.subnets
  health_check_type         = "EC2"
  protect_from_scale_in     = true
  capacity_rebalance        = false
  metrics_granularity       = "1Minute"
  enabled_metrics           = local.group_metrics
  wait_for_capacity_timeout = "0"

  mixed_instances_policy {
    instances_distribution {
      on_demand_allocation_strategy            = "prioritized"
      on_demand_base_capacity                  = 0
      on_demand_percentage_above_base_capacity = 100
    }
    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.agent.id
        version            = aws_launch_template.agent.latest_version
      }
      dynamic "override" {
        for_each = var.instance_types
        content {
          instance_type = override.value
        }
      }
    }
  }

  tag {
    key                 = "flotilla:stack"
    value               = var.stack_name
    propagate_at_launch = true
  }
  tag {
    key                 = "flotilla:role"
    value               = "agent"
    propagate_at_launch = true
  }
  tag {
    key                 = "flotilla:pool"
    value               = "fallback"
    propagate_at_launch = true
  }
  tag {
    key                 = "Name"
    value               = "${var.stack_name}-agent"
    propagate_at_launch = true
  }

  depends_on = [aws_iam_role_policy.agent, aws_cloudwatch_log_group.this]
}

# The scaler: one small on-demand instance from the same image running `scaler run`, which
# long-polls the queue (a Lambda on a 1-minute schedule could not raise capacity within a second
# of a job arriving). It rebuilds its state from the queue and the groups on start.
resource "aws_autoscaling_group" "scaler" {
  name                = "flotilla-${var.stack_name}-scaler"
  min_size            = 1
  max_size            = 1
  desired_capacity    = 1
  availability_zones  = local.zones
  vpc_zone_identifier = local.subnets
  health_check_type   = "EC2"

  launch_template {
    id      = aws_launch_template.scaler.id
    version = aws_launch_template.scaler.latest_version
  }

  # A new image or type replaces the scaler instance (a short pause in scaling, no job lost).
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 0
    }
  }

  tag {
    key                 = "flotilla:stack"
    value               = var.stack_name
    propagate_at_launch = true
  }
  tag {
    key                 = "flotilla:role"
    value               = "scaler"
    propagate_at_launch = true
  }
  tag {
    key                 = "Name"
    value               = "${var.stack_name}-scaler"
    propagate_at_launch = true
  }

  depends_on = [aws_iam_role_policy.scaler, aws_cloudwatch_log_group.this]
}
