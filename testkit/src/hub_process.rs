//! Processes for the end-to-end tests: a real `scaler hub` on a free port with its own data
//! directory, real `agent` processes, and a small HTTP client for the hub's APIs.

use crate::agent_process::AgentProcess;
use crate::{binary, free_port, http, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The scaler binary (`scaler hub`, `scaler run`, the CLI) of this build.
pub fn scaler_binary() -> PathBuf {
    binary("scaler")
}

/// The agent binary of this build.
pub fn agent_binary() -> PathBuf {
    binary("agent")
}

/// Runs the scaler with `env` added; (exit code, stdout followed by stderr).
pub fn scaler_with_env(env: &[(&'static str, String)], args: &[&str]) -> (i32, String) {
    let output = Command::new(scaler_binary())
        .args(args)
        .envs(env.iter().map(|(name, value)| (*name, value)))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

pub struct HubProcess {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub extra_args: Vec<String>,
    /// `host:port` it listens on (`--listen`).
    pub address: String,
}

impl HubProcess {
    /// A hub on 127.0.0.1 and a free port.
    pub fn start(extra_args: &[&str]) -> HubProcess {
        HubProcess::start_listening(&format!("127.0.0.1:{}", free_port()), extra_args)
    }

    /// A hub listening on `address` (`host:port`).
    pub fn start_listening(address: &str, extra_args: &[&str]) -> HubProcess {
        let mut hub = HubProcess {
            child: None,
            port: address.rsplit(':').next().unwrap().parse().unwrap(),
            dir: tempfile::tempdir().unwrap(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            address: address.to_string(),
        };
        hub.launch();
        hub
    }

    /// A replica of a hub whose store is the PostgreSQL database at `database_url`
    /// (`--database`), on 127.0.0.1 and a free port, with the given tokens: every replica started
    /// with the same URL and tokens serves the same queue. The tokens are also written where
    /// `admin_token()`, `registration_token()` and `cli()` read them.
    pub fn start_with_database(
        database_url: &str,
        admin_token: &str,
        registration_token: &str,
        extra_args: &[&str],
    ) -> HubProcess {
        let address = format!("127.0.0.1:{}", free_port());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin-token"), admin_token).unwrap();
        let token_file = format!("{}.token", protocol::spec::DEFAULT_AGENT_TYPE);
        std::fs::write(dir.path().join(token_file), registration_token).unwrap();
        let mut args: Vec<String> = [
            "--database",
            database_url,
            "--admin-token",
            admin_token,
            "--registration-token",
            registration_token,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut hub = HubProcess {
            child: None,
            port: address.rsplit(':').next().unwrap().parse().unwrap(),
            dir,
            extra_args: args,
            address,
        };
        hub.launch();
        hub
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hub.log"))
            .unwrap();
        let child = Command::new(scaler_binary())
            .args(["hub", "--listen", &self.address, "--data-dir"])
            .arg(self.dir.path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start scaler hub");
        self.child = Some(child);
        let url = format!("{}/healthz", self.url());
        wait_for("the hub to serve", Duration::from_secs(20), || {
            http::get(&url, "").is_ok()
        });
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("admin-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn registration_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("default.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Runs `scaler <args>` against this hub; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(scaler_binary())
            .args(args)
            .env("FLOTILLA_HUB_URL", self.url())
            .env("FLOTILLA_DATA_DIR", self.dir.path())
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    pub fn submit(&self, commands: &[&str]) -> String {
        let mut args = vec!["jobs", "submit"];
        for command in commands {
            args.extend(["--command", command]);
        }
        let (code, stdout, stderr) = self.cli(&args);
        assert_eq!(code, 0, "{stderr}");
        stdout.trim().to_string()
    }

    pub fn job(&self, id: &str) -> serde_json::Value {
        self.admin_get(&format!("/api/v1/jobs/{id}"))
    }

    pub fn admin_get(&self, path: &str) -> serde_json::Value {
        http::get(
            &format!("{}{path}", self.url()),
            &format!("Bearer {}", self.admin_token()),
        )
        .unwrap()
        .json()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// A real agent against `hub`, with the hub's registration token.
pub fn start_agent(hub: &HubProcess, extra_args: &[&str]) -> AgentProcess {
    AgentProcess::start(
        &agent_binary(),
        &format!("127.0.0.1:{}", hub.port),
        &hub.registration_token(),
        extra_args,
        None,
    )
}
