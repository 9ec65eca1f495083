//! The scaler as a library: the `scaler` binary is a thin CLI over these modules, and the tests
//! and benchmarks drive them directly.

pub mod client;
pub mod control;
pub mod deploy;
pub mod fleet;
pub mod fleet_aws;
pub mod policy;
pub mod queue;
pub mod reaper;
pub mod run;
pub mod schedule;
pub mod serve;
pub mod sim;
pub mod simulate;
pub mod up;

use std::path::PathBuf;

/// How a client command reaches the hub.
#[derive(clap::Args, Clone)]
pub struct HubAccess {
    /// The hub's URL.
    #[arg(
        long,
        env = "FLOTILLA_HUB_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub hub: String,
    /// The admin token (else read from <data-dir>/admin-token).
    #[arg(
        long,
        env = "FLOTILLA_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// The hub's data directory, to read the admin token from.
    #[arg(
        long,
        env = "FLOTILLA_DATA_DIR",
        default_value = "flotilla-data",
        global = true
    )]
    pub data_dir: PathBuf,
}
