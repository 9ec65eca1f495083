//! The hub's core: the agent protocol (register, sync, jobs, refresh, disconnect), log intake,
//! queue metrics, and the user operations (agent types, jobs, stops), over an in-memory view of
//! the live state that is written through to the [`Store`] — every job change is committed before
//! the call that makes it returns. Calls take `now` (Unix seconds) so time-based rules are tested
//! without sleeping.
//!
//! This file holds what every part shares (configuration, errors, the lock, and [`Hub::commit`],
//! the one way state changes); `impl Hub` is split by concern into the modules below.

mod agent_api;
mod console_api;
mod history;
mod housekeeping;
mod jobs;
mod limits;
mod logs;
mod memory;
mod metrics;
mod user_api;

pub use console_api::JobDetail;
pub use history::{Sample, HISTORY_SECS, SAMPLE_EVERY_SECS};
pub use metrics::{Histogram, HubCounters};

use crate::store::{Durability, JobRow, Store, StoreError};
use crate::tokens;
use memory::{Changes, Core, JobMem};
use protocol::JobSpec;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use thiserror::Error;

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL agents reach the hub at (log pushes go to `<public_url>/api/v1/logs/<job>`).
    pub public_url: String,
    /// SHA-256 of the admin token (user API).
    pub admin_token_hash: String,
    /// An agent that has not synced for this long is lost (its job re-queued or failed).
    pub lost_after_secs: i64,
    /// Agents give up after this long without a sync ([`protocol::GIVE_UP_AFTER_SECS`]); until
    /// then the hub remembers a lost agent, so that one whose link heals can resume its job if
    /// nobody else took it (`rules::decide_healed`). Longer than `lost_after_secs`.
    pub give_up_after_secs: i64,
    /// Log pushes beyond this many bytes per job get 422.
    pub max_log_bytes: i64,
    /// Log tokens expire after this long (the agent then refreshes).
    pub log_token_ttl_secs: i64,
    /// `next_sync_after` hint (ms).
    pub sync_interval_ms: i64,
    pub durability: Durability,
    /// The certificates that sign EC2 instance identity documents (None: AWS's, shipped).
    pub identity_certificates: Option<std::sync::Arc<crate::identity::Certificates>>,
    /// A job's time limit when neither its spec nor its agent type sets one (seconds).
    pub default_time_limit_secs: i64,
    /// Finished jobs' environment values and file contents are purged after this long.
    pub secret_retention_secs: i64,
}

impl HubConfig {
    pub fn new(public_url: &str, admin_token: &str) -> HubConfig {
        HubConfig {
            public_url: public_url.trim_end_matches('/').to_string(),
            admin_token_hash: tokens::hash(admin_token),
            lost_after_secs: 60,
            give_up_after_secs: protocol::GIVE_UP_AFTER_SECS,
            max_log_bytes: 64 * 1024 * 1024,
            log_token_ttl_secs: 3600,
            sync_interval_ms: 1000,
            durability: Durability::Normal,
            identity_certificates: None,
            default_time_limit_secs: 3600,
            secret_retention_secs: 3600,
        }
    }
}

#[derive(Debug, Error)]
pub enum HubError {
    #[error("unauthorized")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// Refused for who the caller is (an instance identity that does not check out).
    #[error("{0}")]
    Forbidden(String),
    #[error("the job's log is full")]
    LogFull,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type HubResult<T> = Result<T, HubError>;

struct Inner {
    store: Store,
    core: Core,
}

pub struct Hub {
    config: HubConfig,
    /// Where the database lives (None: in memory).
    data_dir: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// Bumped whenever queue or agent counts change (metrics long-poll).
    version: tokio::sync::watch::Sender<u64>,
    /// Signalled when log lines arrive or a job finishes (log follow).
    logs_changed: tokio::sync::Notify,
}

impl Hub {
    /// Opens the hub's store in `data_dir` and rebuilds the live state from it. Agents known to be
    /// connected get a fresh `lost_after` grace period to resume syncing.
    pub fn open(data_dir: &Path, config: HubConfig, now: i64) -> HubResult<Hub> {
        let store = Store::open(data_dir, config.durability)?;
        let mut hub = Hub::with_store(store, config, now)?;
        hub.data_dir = Some(data_dir.to_path_buf());
        Ok(hub)
    }

    pub fn in_memory(config: HubConfig, now: i64) -> HubResult<Hub> {
        Hub::with_store(Store::open_in_memory()?, config, now)
    }

    fn with_store(store: Store, config: HubConfig, now: i64) -> HubResult<Hub> {
        let mut core = Core::default();
        for (name, token_hash, created_at) in store.agent_types()? {
            core.type_by_token.insert(token_hash, name.clone());
            core.types.insert(name, created_at);
        }
        core.type_time_limits = store.agent_type_time_limits()?.into_iter().collect();
        for mut row in store.agents(true)? {
            if row.disconnected_at.is_none() {
                row.last_sync_at = row.last_sync_at.max(now);
                core.insert_agent(row);
            } else if row.state == memory::LOST
                && now - row.last_sync_at <= config.give_up_after_secs
            {
                core.lost.insert(row.token_hash.clone(), row);
            }
        }
        for row in store.unfinished_jobs()? {
            let spec: JobSpec = serde_json::from_str(&row.spec)
                .map_err(|error| StoreError::Corrupt(format!("job {}: spec: {error}", row.id)))?;
            core.insert_job(JobMem { row, spec });
        }
        let (version, _) = tokio::sync::watch::channel(0);
        Ok(Hub {
            config,
            data_dir: None,
            inner: Mutex::new(Inner { store, core }),
            version,
            logs_changed: tokio::sync::Notify::new(),
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self, core: &mut Core) {
        core.version += 1;
        self.version.send_replace(core.version);
    }

    pub fn subscribe_version(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn logs_changed(&self) -> &tokio::sync::Notify {
        &self.logs_changed
    }

    pub fn is_admin(&self, token: &str) -> bool {
        tokens::constant_time_eq(&tokens::hash(token), &self.config.admin_token_hash)
    }

    /// The one way live state changes: writes `changes` in one transaction, then applies them to
    /// memory, and tells the metrics long-poll and log followers what moved.
    fn commit(
        &self,
        store: &mut Store,
        core: &mut Core,
        changes: Changes,
        now: i64,
    ) -> HubResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let jobs: Vec<&JobRow> = changes.jobs.iter().collect();
        let agents: Vec<_> = changes.agents.iter().collect();
        store.commit(&jobs, &agents)?;
        limits::log_stop_notes(store, core, &changes.jobs, now);
        let applied = core.apply(changes, now);
        if applied.counts_changed {
            self.bump(core);
        }
        if applied.job_finished {
            self.logs_changed.notify_waiters();
        }
        Ok(())
    }
}
