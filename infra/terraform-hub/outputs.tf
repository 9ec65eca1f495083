# Outputs of the hub module: the twins of infra/cloudformation/hub.yaml's outputs.

output "queue_endpoint" {
  description = "The hub's URL: a fleet's queue_endpoint / QueueEndpoint."
  value       = local.public_url
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer (point hub_domain_name at it)."
  value       = aws_lb.hub.dns_name
}

output "admin_token_secret_arn" {
  description = "Secrets Manager secret with the hub's admin token."
  value       = aws_secretsmanager_secret.admin_token.arn
}

output "registration_token_secret_arn" {
  description = "Secrets Manager secret with the agents' registration token (the fleet's token)."
  value       = aws_secretsmanager_secret.registration_token.arn
}

output "database_endpoint" {
  description = "Host name of the PostgreSQL database (TLS only)."
  value       = aws_db_instance.hub.address
}

output "database_secret_arn" {
  description = "Secrets Manager secret of the database's master user (managed by RDS)."
  value       = local.database_secret_arn
}

output "kms_key_arn" {
  description = "KMS key of the secrets, the database and the log groups."
  value       = local.kms_key_arn
}

output "hub_group_name" {
  description = "The hub instances' Auto Scaling group."
  value       = aws_autoscaling_group.hub.name
}

output "hub_role_arn" {
  description = "IAM role of the hub instances."
  value       = aws_iam_role.hub.arn
}

output "hub_config_parameter" {
  description = "SSM parameter with the hub instances' configuration."
  value       = aws_ssm_parameter.hub_config.name
}
