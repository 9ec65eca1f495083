# The same outputs as infra/cloudformation/fleet.yaml, in snake_case.

output "agent_group_names" {
  description = "Agent Auto Scaling groups, comma-separated, in priority order"
  value       = join(",", local.agent_group_list)
}

output "primary_group_name" {
  description = "The primary agent Auto Scaling group"
  value       = aws_autoscaling_group.agent.name
}

output "fallback_group_name" {
  description = "The on-demand fallback agent Auto Scaling group (null without one)"
  value       = one(aws_autoscaling_group.fallback[*].name)
}

output "scaler_group_name" {
  description = "The scaler's Auto Scaling group (one instance)"
  value       = aws_autoscaling_group.scaler.name
}

output "kms_key_arn" {
  description = "KMS key of the registration token and the log groups (the module's own, alias/flotilla/STACK, or kms_key_arn)"
  value       = local.kms_key_arn
}

output "instance_role_arn" {
  description = "IAM role of the agent instances"
  value       = aws_iam_role.instance.arn
}

output "scaler_role_arn" {
  description = "IAM role of the scaler instance"
  value       = aws_iam_role.scaler.arn
}

output "job_role_arn" {
  description = "IAM role the agents assume for each job (the jobs' short-lived credentials)"
  value       = aws_iam_role.job.arn
}

output "cache_bucket_name" {
  description = "S3 bucket of the jobs' cache (the toolbox's cache with SEMAPHORE_CACHE_BACKEND=s3)"
  value       = aws_s3_bucket.cache.id
}

output "log_groups" {
  description = "CloudWatch log groups (agent, scaler, system), comma-separated"
  value       = join(",", [for name in ["agent", "scaler", "system"] : aws_cloudwatch_log_group.this[name].name])
}

output "agent_config_parameter" {
  description = "SSM parameter with the agents' configuration"
  value       = aws_ssm_parameter.agent_config.name
}

output "scaler_config_parameter" {
  description = "SSM parameter with the scaler's configuration"
  value       = aws_ssm_parameter.scaler_config.name
}

output "agent_token_parameter" {
  description = "SSM SecureString parameter the registration token is read from (created by `scaler deploy` or by you)"
  value       = local.token_parameter
}
