# A hub for the fleets of one VPC: two instances behind an internal HTTPS load balancer,
# PostgreSQL Multi-AZ. Then a fleet uses it (docs/hub-stack.md):
#
#   terraform init && terraform apply
#   export FLOTILLA_TOKEN="$(aws secretsmanager get-secret-value --query SecretString --output text \
#     --secret-id "$(terraform output -raw registration_token_secret_arn)")"
#   scaler deploy --stack gpu-fleet --token-env FLOTILLA_TOKEN \
#     --parameters QueueEndpoint="$(terraform output -raw queue_endpoint)" ImageId=ami-...

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region = "us-east-1"
}

variable "vpc_id" {
  description = "The VPC of the hub (and of the fleets that use it)."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets in two or more zones: hub instances, database and load balancer."
  type        = list(string)
}

variable "image_id" {
  description = "The Flotilla AMI (the fleet's image)."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate for hub.example.com."
  type        = string
}

module "hub" {
  source = "../.."

  stack_name               = "ci-hub"
  vpc_id                   = var.vpc_id
  subnet_ids               = var.private_subnet_ids
  load_balancer_subnet_ids = var.private_subnet_ids
  allowed_cidr             = "10.0.0.0/16"
  certificate_arn          = var.certificate_arn
  hub_domain_name          = "hub.example.com"
  image_id                 = var.image_id
}

output "queue_endpoint" {
  value = module.hub.queue_endpoint
}

output "registration_token_secret_arn" {
  value = module.hub.registration_token_secret_arn
}

output "admin_token_secret_arn" {
  value = module.hub.admin_token_secret_arn
}

output "load_balancer_dns_name" {
  value = module.hub.load_balancer_dns_name
}
