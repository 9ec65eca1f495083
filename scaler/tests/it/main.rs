//! The scaler's integration tests, one binary: `scaler hub`, `scaler run` and the CLI as real
//! processes with real agents; the AWS paths against moto (Auto Scaling, deploy, Terraform); the
//! stacks' templates and policies checked as documents; partitions and a chaos soak in network
//! namespaces. One binary links the AWS SDK once; the shared helpers are the `testkit` crate's.

// Scenarios read top to bottom: the function-length rule is for shipped code.
#![allow(clippy::too_many_lines)]

mod aws_e2e;
mod chaos_soak;
mod deploy_e2e;
mod fleet_e2e;
mod hub_e2e;
mod hub_replicas;
mod hub_stack_e2e;
mod hub_stack_static;
mod hub_transfer;
mod iam_policy;
mod infra_parity;
mod infra_static;
mod partitions;
mod policy_rules;
mod preflight_e2e;
mod red_team_hub;
mod red_team_infra;
mod simulate_cli;
mod terraform_e2e;
