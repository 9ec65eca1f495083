# A GPU fleet: spot g6/g5 first, on-demand fallback, the AMI id read from SSM.
#
#   terraform init && terraform apply
#   aws ssm put-parameter --name /flotilla/gpu-fleet/agent-token --type SecureString \
#     --key-id "$(terraform output -raw kms_key_arn)" --value TOKEN

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

module "gpu_fleet" {
  source = "../.."

  stack_name         = "gpu-fleet"
  queue_endpoint     = "https://example.semaphoreci.com"
  image_id_parameter = "/flotilla/images/gpu"
  instance_types     = ["g6.xlarge", "g5.xlarge", "g6.2xlarge"]
  max_size           = 8
  spare_instances    = 1
  scheduled_minimums = "* 8-18 * * MON-FRI@Europe/Berlin=2"
  idle_timeout       = 600
}

output "agent_group_names" {
  value = module.gpu_fleet.agent_group_names
}

output "scaler_group_name" {
  value = module.gpu_fleet.scaler_group_name
}

output "kms_key_arn" {
  value = module.gpu_fleet.kms_key_arn
}
