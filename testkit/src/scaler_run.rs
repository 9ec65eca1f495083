//! `scaler run` with a local fleet of real agents against a test hub, for the fleet tests
//! (`fleet_e2e.rs`, on this host) and the test bed's (`netbed.rs`, inside a network namespace):
//! the same config file, log file, metrics reader and SIGTERM-then-kill shutdown, whichever way
//! the process is started.

use crate::hub_process::{agent_binary, scaler_binary, HubProcess};
use crate::{free_port, http};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct ScalerRun {
    child: Child,
    /// `host:port` of its Prometheus metrics.
    metrics: String,
    pub dir: tempfile::TempDir,
}

impl ScalerRun {
    /// On this host, against `hub`, with at most `max` agents; `extra_args` follow the config.
    pub fn start(hub: &HubProcess, max: u32, extra_args: &[&str]) -> ScalerRun {
        ScalerRun::spawn(
            Command::new(scaler_binary()),
            "127.0.0.1",
            hub,
            max,
            extra_args,
        )
    }

    /// `command` (the scaler binary, or a wrapper that ends with it) given `run --config FILE
    /// EXTRA_ARGS`: a local fleet of at most `max` agents against `hub`, metrics on
    /// `metrics_host` and a free port.
    pub fn spawn(
        mut command: Command,
        metrics_host: &str,
        hub: &HubProcess,
        max: u32,
        extra_args: &[&str],
    ) -> ScalerRun {
        let dir = tempfile::tempdir().unwrap();
        let metrics = format!("{metrics_host}:{}", free_port());
        let config = format!(
            "metrics_listen: {metrics}\npoll_interval_ms: 300\nfleets:\n  - agent_type: default\n    queue:\n      endpoint: {}\n      token_file: {}\n    local:\n      max: {max}\n      agent_binary: {}\n      work_dir: {}\n",
            hub.url(),
            hub.data_dir().join("default.token").display(),
            agent_binary().display(),
            dir.path().join("fleet").display(),
        );
        let path = dir.path().join("scaler.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("scaler.log")).unwrap();
        let child = command
            .args(["run", "--config"])
            .arg(&path)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        ScalerRun {
            child,
            metrics,
            dir,
        }
    }

    /// A metric's value (summed over its labels: one sample per fleet), when the scaler answers.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = http::get(&format!("http://{}/metrics", self.metrics), "")
            .ok()?
            .body;
        let values: Vec<f64> = text
            .lines()
            .filter(|line| {
                line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("scaler.log")).unwrap_or_default()
    }
}

impl Drop for ScalerRun {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets it stop its agents.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
