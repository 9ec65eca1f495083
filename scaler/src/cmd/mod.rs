//! One module per `scaler` subcommand; each exposes its clap arguments and a `run`-style entry
//! point returning the process exit code. [`HubAccess`] is shared by the hub's client commands,
//! `watch` (stack event progress) by `deploy` and `destroy`.

pub(crate) mod client;
pub(crate) mod deploy;
pub(crate) mod destroy;
pub(crate) mod hub;
pub(crate) mod hub_admin;
pub(crate) mod preflight;
pub(crate) mod registration_rule;
pub(crate) mod run;
pub(crate) mod simulate;
pub(crate) mod status;
pub(crate) mod up;
pub(crate) mod watch;

use anyhow::{Context, Result};
use protocol::JobSpec;
use std::path::{Path, PathBuf};

/// Where `scaler up` records the URL its hub serves on, inside the data directory.
pub(crate) const HUB_URL_FILE: &str = "hub-url";
/// The hub's address when nothing else says where it is (`scaler hub`'s default).
pub(crate) const DEFAULT_HUB_URL: &str = "http://127.0.0.1:8080";

/// How a client command reaches the hub.
#[derive(clap::Args, Clone)]
pub(crate) struct HubAccess {
    /// The hub's URL [default: the one a running `scaler up` recorded in <data-dir>/hub-url,
    /// else http://127.0.0.1:8080].
    #[arg(long, env = "FLOTILLA_HUB_URL", global = true)]
    pub hub: Option<String>,
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

impl HubAccess {
    /// `--hub` / `FLOTILLA_HUB_URL`, else the URL a running `scaler up` recorded, else the default.
    pub(crate) fn hub_url(&self) -> String {
        if let Some(url) = &self.hub {
            return url.clone();
        }
        std::fs::read_to_string(self.data_dir.join(HUB_URL_FILE))
            .ok()
            .map(|text| text.trim().to_string())
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| DEFAULT_HUB_URL.to_string())
    }
}

/// Reads and checks a job spec file: JSON by its extension, else YAML.
pub(crate) fn load_job_spec(path: &Path) -> Result<JobSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let invalid = || format!("{} is not a valid job spec", path.display());
    let spec: JobSpec = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(invalid)?
    } else {
        serde_yaml::from_str(&text).with_context(invalid)?
    };
    spec.validate().with_context(invalid)?;
    Ok(spec)
}
