//! Fleets the control loop sizes. [`Fleet`] is what an Auto Scaling group offers (describe, raise
//! desired, terminate with or without decrement); [`LocalFleet`] implements it with `agent` child
//! processes, one per instance, each in its own working directory and started with
//! `--disconnect-after-job`: a process that exits 0 after its job is an instance that removed itself
//! with decrement; one that dies otherwise is unhealthy and is replaced. Never more than `max` run.

use crate::policy::PoolState;
use crate::reaper::{InstanceFacts, Mark};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use thiserror::Error;

/// Why a fleet operation failed. The control loop logs it and tries again next round.
#[derive(Debug, Error)]
pub enum FleetError {
    #[error("no pool '{0}' in this fleet")]
    UnknownPool(String),
    #[error("no instance '{0}' in this fleet")]
    UnknownInstance(String),
    #[error("this fleet cannot mark instance {0}")]
    CannotMark(String),
    #[error("the agent binary {0} does not exist (build it with `cargo build -p agent`)")]
    MissingAgentBinary(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pool '{0}' has no warm pool")]
    NoWarmPool(String),
    /// A cloud API call failed; `detail` is the SDK's full error chain.
    #[error("{operation}: {detail}")]
    Api { operation: String, detail: String },
}

impl FleetError {
    fn io(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> FleetError {
        let path = path.to_path_buf();
        move |source| FleetError::Io {
            action,
            path,
            source,
        }
    }
}

pub trait Fleet: Send {
    /// The pools of this fleet, in priority order (also where a local fleet reaps and replaces).
    fn describe(&mut self) -> Result<Vec<PoolState>, FleetError>;
    /// Raises a pool's desired capacity (never lowers it).
    fn raise_desired(&mut self, pool: &str, desired: u32) -> Result<(), FleetError>;
    /// Removes an instance; `decrement` also lowers desired so it is not replaced.
    fn terminate(&mut self, instance: &str, decrement: bool) -> Result<(), FleetError>;
    /// Sets how many stopped, pre-initialised instances a pool's warm pool keeps (only asked of
    /// pools that `describe` gave a warm pool).
    fn set_warm_pool(&mut self, pool: &str, size: u32) -> Result<(), FleetError> {
        let _ = size;
        Err(FleetError::NoWarmPool(pool.to_string()))
    }
    /// Instances that removed themselves after their job, and unhealthy ones replaced, so far.
    fn counts(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Instances for the reaper to judge. A fleet that replaces dead instances itself (the local
    /// one) has none to offer.
    fn instances(&mut self) -> Result<Vec<InstanceFacts>, FleetError> {
        Ok(Vec::new())
    }
    /// Records or clears a reaper mark on an instance (only asked of instances `instances` gave).
    fn set_mark(&mut self, instance: &str, mark: Option<&Mark>) -> Result<(), FleetError> {
        let _ = mark;
        Err(FleetError::CannotMark(instance.to_string()))
    }
}

#[derive(Debug, Clone)]
pub struct LocalFleetConfig {
    pub pool: String,
    pub min: u32,
    pub max: u32,
    pub agent_binary: PathBuf,
    /// `host:port` of the control plane, and whether it is plain HTTP.
    pub endpoint: String,
    pub no_https: bool,
    pub registration_token: String,
    pub work_dir: PathBuf,
}

struct Instance {
    child: Child,
    dir: PathBuf,
}

pub struct LocalFleet {
    config: LocalFleetConfig,
    desired: u32,
    instances: BTreeMap<String, Instance>,
    next_index: u64,
    completed: u64,
    replaced: u64,
}

impl LocalFleet {
    pub fn new(config: LocalFleetConfig) -> Result<LocalFleet, FleetError> {
        if !config.agent_binary.exists() {
            return Err(FleetError::MissingAgentBinary(config.agent_binary));
        }
        std::fs::create_dir_all(&config.work_dir)
            .map_err(FleetError::io("cannot create", &config.work_dir))?;
        // Instances run inside their own directories: every path handed to them must be absolute.
        let mut config = config;
        config.work_dir = config
            .work_dir
            .canonicalize()
            .map_err(FleetError::io("cannot resolve", &config.work_dir))?;
        config.agent_binary = config
            .agent_binary
            .canonicalize()
            .map_err(FleetError::io("cannot resolve", &config.agent_binary))?;
        Ok(LocalFleet {
            desired: config.min,
            config,
            instances: BTreeMap::new(),
            next_index: 1,
            completed: 0,
            replaced: 0,
        })
    }

    fn launch(&mut self) -> Result<(), FleetError> {
        let name = format!("local-{:06}-{:04}", std::process::id(), self.next_index);
        self.next_index += 1;
        let dir = self.config.work_dir.join(&name);
        let (home, tmp) = (dir.join("home"), dir.join("tmp"));
        for path in [&home, &tmp] {
            std::fs::create_dir_all(path).map_err(FleetError::io("cannot create", path))?;
        }
        let output_path = dir.join("agent.out");
        let output = std::fs::File::create(&output_path)
            .map_err(FleetError::io("cannot create", &output_path))?;
        let mut command = Command::new(&self.config.agent_binary);
        command.args([
            "start",
            "--endpoint",
            &self.config.endpoint,
            "--name",
            &name,
            "--disconnect-after-job",
        ]);
        if self.config.no_https {
            command.arg("--no-https");
        }
        let child = command
            // The token goes through the environment, not argv (argv is visible to every user).
            .env("SEMAPHORE_AGENT_TOKEN", &self.config.registration_token)
            .env("SEMAPHORE_AGENT_LOG_FILE_PATH", dir.join("agent.log"))
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(
                output
                    .try_clone()
                    .map_err(FleetError::io("cannot duplicate", &output_path))?,
            )
            .stderr(output)
            .spawn()
            .map_err(FleetError::io("cannot start", &self.config.agent_binary))?;
        tracing::info!(instance = %name, pid = child.id(), "instance launched");
        self.instances.insert(name, Instance { child, dir });
        Ok(())
    }

    /// Reaps exited instances: exit 0 = removed itself with decrement; anything else = unhealthy.
    fn reap(&mut self) {
        let mut exited = Vec::new();
        for (name, instance) in &mut self.instances {
            if let Ok(Some(status)) = instance.child.try_wait() {
                exited.push((name.clone(), status));
            }
        }
        for (name, status) in exited {
            if let Some(instance) = self.instances.remove(&name) {
                if status.success() {
                    self.desired = self.desired.saturating_sub(1).max(self.config.min);
                    self.completed += 1;
                    tracing::info!(instance = %name, "instance finished its job and removed itself (decrement)");
                    let _ = std::fs::remove_dir_all(&instance.dir);
                } else {
                    self.replaced += 1;
                    tracing::warn!(instance = %name, %status, dir = %instance.dir.display(), "instance died: unhealthy, replacing it");
                }
            }
        }
    }

    /// Stops every instance (SIGTERM, then SIGKILL after `grace`).
    pub fn shutdown(&mut self, grace: std::time::Duration) {
        for instance in self.instances.values() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(instance.child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline
            && self
                .instances
                .values_mut()
                .any(|i| matches!(i.child.try_wait(), Ok(None)))
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        for instance in self.instances.values_mut() {
            let _ = instance.child.kill();
            let _ = instance.child.wait();
        }
        self.instances.clear();
    }
}

impl Fleet for LocalFleet {
    fn describe(&mut self) -> Result<Vec<PoolState>, FleetError> {
        self.reap();
        let target = self.desired.min(self.config.max) as usize;
        while self.instances.len() < target {
            self.launch()?;
        }
        Ok(vec![PoolState {
            name: self.config.pool.clone(),
            desired: self.desired,
            min: self.config.min,
            max: self.config.max,
            in_service: self.instances.len() as u32,
            pending: 0,
            short: false,
            health: crate::pool_health::PoolHealth::default(),
            warm_pool: None,
        }])
    }

    fn raise_desired(&mut self, pool: &str, desired: u32) -> Result<(), FleetError> {
        if pool != self.config.pool {
            return Err(FleetError::UnknownPool(pool.to_string()));
        }
        self.desired = self.desired.max(desired.min(self.config.max));
        let target = self.desired as usize;
        while self.instances.len() < target {
            self.launch()?;
        }
        Ok(())
    }

    fn terminate(&mut self, instance: &str, decrement: bool) -> Result<(), FleetError> {
        let mut removed = self
            .instances
            .remove(instance)
            .ok_or_else(|| FleetError::UnknownInstance(instance.to_string()))?;
        let _ = removed.child.kill();
        let _ = removed.child.wait();
        let _ = std::fs::remove_dir_all(&removed.dir);
        if decrement {
            self.desired = self.desired.saturating_sub(1).max(self.config.min);
        }
        Ok(())
    }

    fn counts(&self) -> (u64, u64) {
        (self.completed, self.replaced)
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        self.shutdown(std::time::Duration::from_secs(5));
    }
}
