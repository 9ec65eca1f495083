//! The hub's durable state behind one trait, [`Store`], with two implementations: SQLite in WAL
//! mode (`sqlite.rs`, the embedded default: one hub process, one file) and PostgreSQL
//! (`postgres.rs`: any number of hub replicas on one database, the database the source of truth).
//! Every method is one transaction.
//!
//! Several replicas stay consistent through two things every store keeps:
//! - **Revisions.** Each job, agent and agent-type row carries the revision of the commit that last
//!   wrote it, from one counter that every writing transaction takes in turn, so revisions are
//!   handed out in commit order. [`Store::changes_since`] returns the rows written after a
//!   revision: a replica applies them to its memory (`Hub::catch_up`).
//! - **Conditional writes.** [`Store::commit`] writes a job or agent row only if its stored
//!   revision is still the one the replica read; otherwise nothing is written and it answers
//!   [`StoreError::Conflict`], and the hub catches up and decides again. That is what hands a job
//!   out exactly once across replicas.

mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use protocol::{JobResult, JobState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A row changed since it was read (another replica wrote it): nothing was written.
    #[error("a row changed under this write (another hub replica wrote it)")]
    Conflict,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// How hard SQLite works to keep commits across power loss. Both survive a killed process.
/// (PostgreSQL's durability is the server's `synchronous_commit`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync at checkpoints only (WAL `synchronous=NORMAL`).
    Normal,
    /// fsync on every commit.
    Full,
}

/// Where a hub keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `hub.db` in this directory.
    Sqlite { data_dir: PathBuf },
    /// A PostgreSQL database (`postgres://user:password@host:port/database?sslmode=require`),
    /// with the certificates that sign its server's (TLS when given).
    Postgres {
        url: String,
        ca_file: Option<PathBuf>,
    },
}

impl StoreLocation {
    /// The SQLite data directory, if that is where the state lives.
    pub fn data_dir(&self) -> Option<&Path> {
        match self {
            StoreLocation::Sqlite { data_dir } => Some(data_dir),
            StoreLocation::Postgres { .. } => None,
        }
    }
}

/// Opens (creating and migrating as needed) the store at `location`.
pub fn open(location: &StoreLocation, durability: Durability) -> StoreResult<Box<dyn Store>> {
    Ok(match location {
        StoreLocation::Sqlite { data_dir } => Box::new(SqliteStore::open(data_dir, durability)?),
        StoreLocation::Postgres { url, ca_file } => {
            Box::new(PostgresStore::connect(url, ca_file.as_deref())?)
        }
    })
}

/// A job row, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobRow {
    pub seq: i64,
    pub id: String,
    pub agent_type: String,
    pub spec: String,
    pub state: JobState,
    pub result: Option<JobResult>,
    pub reason: Option<String>,
    pub attempts: i64,
    pub agent: Option<String>,
    pub stop_requested: bool,
    pub log_token_hash: Option<String>,
    pub log_token_expires_at: Option<i64>,
    pub log_lines: i64,
    pub log_bytes: i64,
    pub log_trimmed: bool,
    /// Where the current attempt's log begins: lines before it are earlier, lost attempts'.
    pub log_base: i64,
    pub queued_at: i64,
    pub assigned_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The commit that last wrote the row (0: not stored yet).
    pub revision: i64,
}

impl JobRow {
    /// A job just submitted: queued, not stored yet (`seq` and `revision` 0).
    pub fn queued(id: String, agent_type: String, spec: String, now: i64) -> JobRow {
        JobRow {
            seq: 0,
            id,
            agent_type,
            spec,
            state: JobState::Queued,
            result: None,
            reason: None,
            attempts: 0,
            agent: None,
            stop_requested: false,
            log_token_hash: None,
            log_token_expires_at: None,
            log_lines: 0,
            log_bytes: 0,
            log_trimmed: false,
            log_base: 0,
            queued_at: now,
            assigned_at: None,
            started_at: None,
            finished_at: None,
            revision: 0,
        }
    }
}

/// Agent rows forgotten by one `Store::prune_agents` call.
pub const PRUNE_BATCH: i64 = 5000;

/// The stored state of an agent that stopped syncing (it may heal until the give-up time).
pub const LOST_STATE: &str = "lost";

/// An agent row, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentRow {
    pub name: String,
    pub agent_type: String,
    pub token_hash: String,
    pub state: String,
    pub job_id: Option<String>,
    pub jobs_finished: i64,
    pub registered_at: i64,
    pub last_sync_at: i64,
    pub interrupted_at: i64,
    pub disconnected_at: Option<i64>,
    pub registration: String,
    /// A user asked it to shut down (it gets `shutdown` at its next sync).
    pub shutdown_requested: bool,
    /// The commit that last wrote the row; 0 for a new registration, which may replace only a
    /// row that is not live (disconnected, lost).
    pub revision: i64,
}

/// An agent type row, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentTypeRow {
    pub name: String,
    pub token_hash: String,
    pub created_at: i64,
    /// Its default job time limit (seconds), if it has one.
    pub time_limit: Option<i64>,
    pub revision: i64,
}

/// The rows written after a revision, and the revision they bring a reader to.
#[derive(Debug, Default)]
pub struct Feed {
    pub revision: i64,
    pub agent_types: Vec<AgentTypeRow>,
    pub jobs: Vec<JobRow>,
    pub agents: Vec<AgentRow>,
}

/// Which jobs the console lists (`Store::query_jobs`); `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobQuery {
    pub state: Option<JobState>,
    pub agent_type: Option<String>,
    /// A case-insensitive part of the job's name.
    pub name: Option<String>,
    /// Only jobs older than this `seq` (the next page).
    pub before: Option<i64>,
    pub limit: u32,
}

impl JobQuery {
    /// How many rows to fetch: one more than a page, to tell whether more follow.
    pub fn fetch(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// The page from rows fetched with [`JobQuery::fetch`], and whether more follow.
    pub fn page(&self, mut rows: Vec<JobRow>) -> (Vec<JobRow>, bool) {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        (rows, more)
    }
}

/// A registered instance, as stored (instance id, agent type, account, region, registered at,
/// launched at).
pub type InstanceRow = (String, String, String, String, i64, Option<i64>);

/// The lines of a batch pushed at `start_from` that a log holding `count` lines of `bytes` bytes
/// does not have yet (a retried batch adds nothing twice), with their indices, and the log's
/// line and byte counts once they are stored (each line with its newline).
pub fn new_log_lines<'a>(
    start_from: i64,
    (count, bytes): (i64, i64),
    lines: &[&'a str],
) -> (Vec<(i64, &'a str)>, (i64, i64)) {
    let (mut count, mut bytes) = (count, bytes);
    let mut new = Vec::new();
    for (offset, line) in lines.iter().enumerate() {
        let index = start_from + offset as i64;
        if index < count {
            continue;
        }
        new.push((index, *line));
        count = index + 1;
        bytes += line.len() as i64 + 1;
    }
    (new, (count, bytes))
}

/// The hub's durable state. Every method is one transaction.
pub trait Store: Send {
    /// The schema version this database is at.
    fn schema_version(&self) -> StoreResult<i64>;
    /// Whether other hub processes may write the same state (memory must catch up).
    fn shared(&self) -> bool;
    /// A signal raised when another process committed (PostgreSQL's `LISTEN`), if the store
    /// has one.
    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>>;
    /// Whether other processes committed lately (replicas race for the same jobs).
    fn others_writing(&self, now: i64) -> bool;
    /// Whether this process leads the once-only sweeps (lost agents, time limits, purges).
    /// Always true for a store nobody else writes.
    fn try_lead(&mut self) -> StoreResult<bool>;
    /// The newest committed revision.
    fn head_revision(&self) -> StoreResult<i64>;
    /// Rows written after `revision` (see the module's paragraph).
    fn changes_since(&self, revision: i64) -> StoreResult<Feed>;

    // --- agent types and registration
    fn insert_agent_type(&mut self, name: &str, token_hash: &str, now: i64) -> StoreResult<bool>;
    /// Creates an agent type with its instance-identity rule (JSON) in one transaction.
    fn insert_agent_type_with_identity(
        &mut self,
        name: &str,
        token_hash: &str,
        now: i64,
        identity_policy: &str,
    ) -> StoreResult<bool>;
    fn agent_types(&self) -> StoreResult<Vec<AgentTypeRow>>;
    /// The instance-identity rule (JSON) of each agent type that has one.
    fn identity_policies(&self) -> StoreResult<Vec<(String, String)>>;
    fn identity_policy(&self, agent_type: &str) -> StoreResult<Option<String>>;
    fn set_agent_type_time_limit(&mut self, name: &str, seconds: Option<i64>) -> StoreResult<()>;
    /// Records that an instance registered; false if it had registered before (nothing written).
    fn record_instance(&mut self, instance: &InstanceRow) -> StoreResult<bool>;
    fn instance_launched_at(&self, instance_id: &str) -> StoreResult<Option<i64>>;
    fn instance_registered(&self, instance_id: &str) -> StoreResult<bool>;
    /// Whether an agent of this name (of any type) was ever assigned a job.
    fn name_held_a_job(&self, name: &str) -> StoreResult<bool>;

    // --- agents
    fn agent(&self, name: &str) -> StoreResult<Option<AgentRow>>;
    fn agents(&self, include_disconnected: bool) -> StoreResult<Vec<AgentRow>>;
    /// What a starting hub keeps of the agents: the connected ones, and the lost ones that
    /// synced at `lost_since` or later (they may still heal). Not the history.
    fn live_agents(&self, lost_since: i64) -> StoreResult<Vec<AgentRow>>;
    /// Forgets agents that left (disconnected or lost) before `left_before`, at most
    /// [`PRUNE_BATCH`] a call (a long history goes over several calls, each short); their
    /// names' one-job records (`job_holders`) and instances (`registered_instances`) stay.
    /// Returns how many were forgotten.
    fn prune_agents(&mut self, left_before: i64) -> StoreResult<usize>;
    /// Records when each agent last synced, its reported state and interruption (batched; not
    /// a job state change, no revision). A time never moves backwards.
    fn touch_agents(&mut self, updates: &[(String, i64, String, i64)]) -> StoreResult<()>;

    // --- jobs
    /// Stores a new job; returns its `seq` and revision.
    fn insert_job(&mut self, job: &JobRow) -> StoreResult<(i64, i64)>;
    /// Writes changed jobs and agents in one transaction, each only if its stored revision is
    /// the row's (else [`StoreError::Conflict`] and nothing is written). Returns the revision.
    fn commit(&mut self, jobs: &[&JobRow], agents: &[&AgentRow]) -> StoreResult<i64>;
    fn job(&self, id: &str) -> StoreResult<Option<JobRow>>;
    /// Jobs not in a final state, oldest first.
    fn unfinished_jobs(&self) -> StoreResult<Vec<JobRow>>;
    /// The newest jobs first, optionally in one state.
    fn list_jobs(&self, state: Option<JobState>, limit: u32) -> StoreResult<Vec<JobRow>>;
    /// A page of jobs for the console, newest first, and whether more follow.
    fn query_jobs(&self, query: &JobQuery) -> StoreResult<(Vec<JobRow>, bool)>;
    /// Rewrites the spec of each job finished before `finished_before` whose secrets are still
    /// there with `redact(spec)`. Returns how many jobs were purged.
    fn purge_job_secrets(
        &mut self,
        finished_before: i64,
        redact: &dyn Fn(&str) -> String,
    ) -> StoreResult<usize>;

    // --- logs
    /// Stores lines at `start_from..`; lines already stored at those indices are kept (a
    /// retried batch is idempotent). Returns the job's line and byte counts afterwards.
    fn append_log(
        &mut self,
        job_id: &str,
        start_from: i64,
        lines: &[&str],
    ) -> StoreResult<(i64, i64)>;
    /// A job's stored line and byte counts.
    fn log_counts(&self, job_id: &str) -> StoreResult<(i64, i64)>;
    /// Up to `limit` log lines from `start_from`.
    fn log_lines(&self, job_id: &str, start_from: i64, limit: i64) -> StoreResult<Vec<String>>;

    // --- moving a hub (export / import)
    fn instances(&self) -> StoreResult<Vec<InstanceRow>>;
    fn job_holders(&self) -> StoreResult<Vec<(String, String, String)>>;
    /// Jobs with `seq` above `after`, oldest first, at most `limit`.
    fn jobs_after(&self, after: i64, limit: u32) -> StoreResult<Vec<JobRow>>;
    /// Writes rows exported from another hub as they are (same `seq`s, revisions renewed).
    fn import(&mut self, batch: &ImportBatch) -> StoreResult<()>;
}

/// Rows from another hub, written by [`Store::import`] in one transaction.
#[derive(Debug, Default)]
pub struct ImportBatch {
    pub agent_types: Vec<(AgentTypeRow, Option<String>)>,
    pub instances: Vec<InstanceRow>,
    pub job_holders: Vec<(String, String, String)>,
    pub agents: Vec<AgentRow>,
    pub jobs: Vec<JobRow>,
    /// (job id, line index, line)
    pub log_lines: Vec<(String, i64, String)>,
}
