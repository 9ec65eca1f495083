//! The hub's core: the agent protocol (register, sync, jobs, refresh, disconnect), log intake,
//! queue metrics, and the user operations (agent types, jobs, stops), over an in-memory view of
//! the live state that is written through to the [`Store`] — every job change is committed before
//! the call that makes it returns. Calls take `now` (Unix seconds) so time-based rules are tested
//! without sleeping.
//!
//! This file holds what every part shares (configuration, errors, the lock, [`Hub::commit`], the
//! one way state changes, and [`Hub::catch_up`], how a replica's memory follows commits other
//! replicas made on a shared store); `impl Hub` is split by concern into the modules below.
//!
//! On a shared store (PostgreSQL with several replicas) memory is a cache of the database: every
//! write is conditional on the rows it read (`store/mod.rs`), and an operation that met a row
//! another replica changed, or a token or job this replica has not seen yet, catches up and runs
//! again ([`Hub::locked`]). Other replicas' commits also arrive by `NOTIFY` and every second
//! (`server::spawn_housekeeping`), so a replica's metrics long-poll wakes for any replica's job.

mod admission;
mod agent_api;
mod console_api;
mod error;
mod history;
mod housekeeping;
mod jobs;
mod limits;
mod logs;
mod memory;
mod metrics;
mod user_api;

pub use admission::{Admission, FirstLook};
pub(crate) use console_api::JobDetail;
pub use error::{HubError, Invalid};
pub use history::Sample;
pub(crate) use history::SAMPLE_EVERY_SECS;
pub use metrics::{Histogram, HubCounters};

use crate::clock::{Clock, SystemClock};
use crate::store::{
    self, AgentStatus, Durability, JobRow, SqliteStore, Store, StoreError, StoreLocation,
};
use crate::tokens;
use memory::{Changes, Core, JobMem};
use protocol::JobSpec;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

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
    /// Live agents one agent type may have at once; registrations beyond get 429.
    pub max_agents_per_type: usize,
    /// Where the HTTP API, the console and the housekeeping loop read the time.
    pub clock: std::sync::Arc<dyn Clock>,
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
            max_agents_per_type: 10_000,
            clock: std::sync::Arc::new(SystemClock),
        }
    }
}

pub type HubResult<T> = Result<T, HubError>;

struct Inner {
    store: Box<dyn Store>,
    core: Core,
}

/// Calls from the async side in the core at once: one holds the lock, the others are ready
/// to take it (a store round trip of one overlaps the others' waits).
pub(crate) const CALLERS: usize = 4;

/// How many times an operation runs when other replicas keep changing what it read.
const MAX_ATTEMPTS: u32 = 16;

pub struct Hub {
    config: HubConfig,
    /// Where the database lives (None: in memory).
    data_dir: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// Bumped whenever queue or agent counts change (metrics long-poll).
    version: tokio::sync::watch::Sender<u64>,
    /// Signalled when log lines arrive or a job finishes (log follow).
    logs_changed: tokio::sync::Notify,
    /// Catch-ups with other replicas begun so far (each one's ticket), and the ticket of the
    /// last that succeeded: an operation that met an unknown token after a catch-up that began
    /// since it arrived succeeded answers 401/404 without a round trip of its own.
    catch_ups_begun: AtomicU64,
    catch_ups_done: AtomicU64,
    /// Turns for calls from the async side (`api::blocking`).
    callers: std::sync::Arc<tokio::sync::Semaphore>,
    /// Turns for requests with tokens memory does not know ([`Hub::strangers`]).
    strangers: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Hub {
    /// Opens the hub's store in `data_dir` and rebuilds the live state from it. Agents known to be
    /// connected get a fresh `lost_after` grace period to resume syncing.
    pub fn open(data_dir: &Path, config: HubConfig, now: i64) -> HubResult<Hub> {
        let location = StoreLocation::Sqlite {
            data_dir: data_dir.to_path_buf(),
        };
        Hub::open_at(&location, config, now)
    }

    /// Opens the hub's store wherever it is (SQLite or PostgreSQL) and rebuilds the live state.
    pub fn open_at(location: &StoreLocation, config: HubConfig, now: i64) -> HubResult<Hub> {
        let store = store::open(location, config.durability)?;
        let mut hub = Hub::with_store(store, config, now)?;
        hub.data_dir = location.data_dir().map(Path::to_path_buf);
        Ok(hub)
    }

    pub fn in_memory(config: HubConfig, now: i64) -> HubResult<Hub> {
        Hub::with_store(Box::new(SqliteStore::open_in_memory()?), config, now)
    }

    fn with_store(store: Box<dyn Store>, config: HubConfig, now: i64) -> HubResult<Hub> {
        // Read first: a row written while the rest loads comes again at the first catch-up.
        let mut core = Core {
            revision: store.head_revision()?,
            ..Core::default()
        };
        for row in store.agent_types()? {
            core.apply_type(row);
        }
        // Only what the rules need: connected agents and lost ones that may still heal.
        for mut row in store.live_agents(now - config.give_up_after_secs)? {
            if row.disconnected_at.is_none() {
                row.last_sync_at = row.last_sync_at.max(now);
                core.insert_agent(row);
            } else if row.state == AgentStatus::Lost
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
            catch_ups_begun: AtomicU64::new(0),
            catch_ups_done: AtomicU64::new(0),
            callers: std::sync::Arc::new(tokio::sync::Semaphore::new(CALLERS)),
            strangers: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }

    /// The time now, by the hub's clock (`HubConfig::clock`).
    pub fn now(&self) -> i64 {
        self.config.clock.now()
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Turns for the async side's calls into the core: at most [`CALLERS`] at once.
    pub fn callers(&self) -> &std::sync::Arc<tokio::sync::Semaphore> {
        &self.callers
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

    /// Queue-metrics long-polls waiting for a change: each holds a [`Hub::subscribe_version`]
    /// receiver while it waits, and nothing else keeps one.
    pub fn long_polls_waiting(&self) -> usize {
        self.version.receiver_count()
    }

    pub(crate) fn logs_changed(&self) -> &tokio::sync::Notify {
        &self.logs_changed
    }

    pub fn is_admin(&self, token: &str) -> bool {
        tokens::constant_time_eq(&tokens::hash(token), &self.config.admin_token_hash)
    }

    /// The one way live state changes: writes `changes` in one transaction (each row only if
    /// nobody changed it since it was read), then applies them to memory, and tells the metrics
    /// long-poll and log followers what moved.
    fn commit(
        &self,
        store: &mut dyn Store,
        core: &mut Core,
        changes: Changes,
        now: i64,
    ) -> HubResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let jobs: Vec<&JobRow> = changes.jobs.iter().collect();
        let agents: Vec<_> = changes.agents.iter().collect();
        let revision = store.commit(&jobs, &agents)?;
        core.committed(revision);
        let changes = changes.at_revision(revision);
        limits::log_stop_notes(store, &changes.jobs, now);
        let applied = core.apply(changes, now);
        self.announce(core, &applied);
        Ok(())
    }

    /// Tells the metrics long-poll and log followers what moved.
    fn announce(&self, core: &mut Core, applied: &memory::Applied) {
        if applied.counts_changed {
            self.bump(core);
        }
        if applied.job_finished {
            self.logs_changed.notify_waiters();
        }
    }

    /// Applies what other replicas committed since this one last looked (nothing on a store
    /// nobody else writes). Returns whether anything was new.
    fn catch_up(&self, store: &dyn Store, core: &mut Core, now: i64) -> HubResult<bool> {
        // One round trip when nothing is new (the usual case).
        if !store.shared() {
            return Ok(false);
        }
        // Taken before the first read; recorded as done (under the lock) only on success.
        let ticket = self.catch_ups_begun.fetch_add(1, Ordering::SeqCst) + 1;
        let news = self.apply_news(store, core, now)?;
        self.catch_ups_done.store(ticket, Ordering::SeqCst);
        Ok(news)
    }

    /// What other replicas committed since memory's revision, applied. Whether anything was.
    fn apply_news(&self, store: &dyn Store, core: &mut Core, now: i64) -> HubResult<bool> {
        if store.head_revision()? <= core.revision {
            return Ok(false);
        }
        let feed = store.changes_since(core.revision)?;
        if feed.revision <= core.revision {
            return Ok(false);
        }
        let applied = core.apply_feed(feed, now, self.config.give_up_after_secs);
        self.announce(core, &applied);
        Ok(true)
    }

    /// The state under the lock, caught up with other replicas' commits first (reads that must
    /// not answer from a stale memory: a job, the agents, a log's end).
    fn fresh(&self) -> HubResult<MutexGuard<'_, Inner>> {
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        self.catch_up(store.as_ref(), core, self.now())?;
        Ok(guard)
    }

    /// Catches up with other replicas' commits (the server calls it on their `NOTIFY` and
    /// every second). Returns whether anything was new.
    pub fn refresh(&self, now: i64) -> HubResult<bool> {
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        self.catch_up(store.as_ref(), core, now)
    }

    /// Other replicas' commits, as a signal (None: nobody else writes this hub's store).
    pub fn change_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.lock().store.change_signal()
    }

    /// Runs `operation` under the lock. On a shared store, when it met state another replica
    /// changed (a conflicting write, or a token or job this replica has not seen yet), catches
    /// up and runs it again; a conflict that outlasts [`MAX_ATTEMPTS`] is returned (503). A
    /// token or job still unknown after a catch-up that began after the call arrived is unknown:
    /// a flood of made-up tokens shares one round trip per turn of the lock, not one each.
    fn locked<T>(
        &self,
        now: i64,
        operation: impl FnMut(&mut dyn Store, &mut Core) -> HubResult<T>,
    ) -> HubResult<T> {
        let arrived = self.catch_ups_begun.load(Ordering::SeqCst);
        self.locked_since(arrived, now, operation)
    }

    /// [`Hub::locked`] for an operation that arrived when `arrived` catch-ups had begun (it
    /// may have waited for its turn since).
    fn locked_since<T>(
        &self,
        arrived: u64,
        now: i64,
        mut operation: impl FnMut(&mut dyn Store, &mut Core) -> HubResult<T>,
    ) -> HubResult<T> {
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        let mut attempt = 1;
        loop {
            let result = operation(store.as_mut(), core);
            let conflict = matches!(result, Err(HubError::Store(StoreError::Conflict)));
            let unseen = result.as_ref().is_err_and(HubError::may_be_unseen);
            let unseen_since_arrival =
                unseen && attempt == 1 && self.catch_ups_done.load(Ordering::SeqCst) > arrived;
            if attempt >= MAX_ATTEMPTS
                || !(conflict || (unseen && store.shared()))
                || unseen_since_arrival
            {
                return result;
            }
            let news = self.catch_up(store.as_ref(), core, now)?;
            if !news && !conflict {
                return result;
            }
            attempt += 1;
        }
    }
}
