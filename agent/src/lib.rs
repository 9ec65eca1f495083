//! Flotilla's agent as a library: the `agent` binary is a thin CLI over these modules, and the
//! tests and benchmarks drive them directly.

pub mod client;
pub mod cloud;
pub mod command;
pub mod compose;
pub mod config;
pub mod gpu;
pub mod gpu_health;
pub mod health;
pub mod host;
pub mod job;
pub mod job_cgroup;
pub mod job_record;
pub mod job_role;
pub mod job_user;
pub mod joblog;
pub mod listener;
pub mod logging;
pub mod pusher;
pub mod retry;
pub mod secure_fs;
pub mod selftest;
pub mod shell;
pub mod state;
pub mod xid;
