//! The agent's integration tests, one binary: the job executor event by event (shell and
//! containers, on the machine's Docker and the rootless engine), the job user's boundary, the agent
//! process against a fake control plane and a fake instance metadata service, its AWS calls against
//! moto, the AMI's files checked statically and its root file system booted under systemd. One
//! binary links the AWS SDK once; the shared helpers are the `testkit` crate's. Tests that run jobs
//! as one of this machine's job users take turns on it (`testkit::job_users`).

// Scenarios read top to bottom: the function-length rule is for shipped code.
#![allow(clippy::too_many_lines)]

mod ami_boot;
mod ami_static;
mod cloud;
mod docker_compose;
mod gpu_health;
mod job_role;
mod job_sequences;
mod job_user;
mod listener;
mod red_team_files;
mod red_team_one_job;
mod sealed_instance;
