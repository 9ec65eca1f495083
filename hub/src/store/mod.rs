//! The hub's durable state behind one trait, [`Store`], with two implementations: SQLite in WAL
//! mode (`sqlite.rs`, the embedded default: one hub process, one file) and PostgreSQL
//! (`postgres.rs`: any number of hub replicas on one database, the database the source of truth).
//! Every method is one transaction. Every row is a named struct here; `rows.rs` declares each
//! table's columns once and reads a row of either backend by column name. The contract both
//! stores keep is stated as tests in `hub/tests/it/store_contract.rs`, run on each.
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
mod rows;
mod sqlite;

pub(crate) use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use protocol::{AgentState, JobResult, JobState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// What went wrong in a store, named by situation whichever backend it came from (the hub's code
/// and its HTTP edge never see a backend's own error types).
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database did not answer, or answered with an error a later try may not meet (a lost
    /// connection, a failover, a server shutting down): the caller may retry.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A statement failed in a way a retry does not fix (a bug, a full disk, a broken file).
    #[error("database error: {0}")]
    Failed(String),
    /// The database could not be opened or connected to as configured.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A row changed since it was read (another replica wrote it): nothing was written.
    #[error("a row changed under this write (another hub replica wrote it)")]
    Conflict,
}

/// SQLite runs in this process: its errors are the statement's own, and a retry does not help.
impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        StoreError::Failed(error.to_string())
    }
}

/// PostgreSQL is a server over the network: its errors are treated as passing (the connection is
/// made again at the next call, `postgres.rs`).
impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> StoreError {
        StoreError::Unavailable(format!("PostgreSQL: {error}"))
    }
}

pub(crate) type StoreResult<T> = Result<T, StoreError>;

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
pub(crate) const PRUNE_BATCH: i64 = 5000;

/// What the hub knows of an agent's state: the state its last sync reported, or one the hub gave
/// it. Stored as text: a protocol state's wire name, `disconnected`, `lost` or `revoked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AgentStatus {
    /// The state of the agent's last sync.
    Reported(AgentState),
    /// It said goodbye (disconnect) and left.
    Disconnected,
    /// It stopped syncing (it may heal until the give-up time).
    Lost,
    /// Its token was revoked by a user (it is told to shut down and may not come back).
    Revoked,
}

impl AgentStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Reported(state) => state.as_str(),
            AgentStatus::Disconnected => "disconnected",
            AgentStatus::Lost => "lost",
            AgentStatus::Revoked => "revoked",
        }
    }

    /// The status a stored text names, if any.
    pub fn parse(text: &str) -> Option<AgentStatus> {
        match text {
            "disconnected" => Some(AgentStatus::Disconnected),
            "lost" => Some(AgentStatus::Lost),
            "revoked" => Some(AgentStatus::Revoked),
            _ => AgentState::parse(text).map(AgentStatus::Reported),
        }
    }
}

impl From<AgentStatus> for String {
    fn from(status: AgentStatus) -> String {
        status.as_str().to_string()
    }
}

impl TryFrom<String> for AgentStatus {
    type Error = String;
    fn try_from(text: String) -> Result<AgentStatus, String> {
        AgentStatus::parse(&text).ok_or_else(|| format!("unknown agent state '{text}'"))
    }
}

impl std::fmt::Display for AgentStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// An agent row, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentRow {
    pub name: String,
    pub agent_type: String,
    pub token_hash: String,
    pub state: AgentStatus,
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

/// An instance that registered (once, ever), as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceRow {
    pub instance_id: String,
    pub agent_type: String,
    pub account_id: String,
    pub region: String,
    pub registered_at: i64,
    /// Its identity document's `pendingTime`, when it had one.
    pub launched_at: Option<i64>,
}

/// An agent name that held a job: a single-job agent never registers under it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobHolderRow {
    pub name: String,
    pub agent_type: String,
    pub job_id: String,
}

/// An agent type's instance-identity rule (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPolicyRow {
    pub agent_type: String,
    pub policy: String,
}

/// What one sync tells about an agent, written in batches by [`Store::touch_agents`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTouch {
    pub name: String,
    pub last_sync_at: i64,
    pub state: AgentStatus,
    pub interrupted_at: i64,
}

/// What a name has been: the agent type it belongs to — the one a job was assigned under, else
/// the one of the agent row of that name (live, lost or departed, until pruned); `None` when free
/// — and whether an agent of that name (of any type) was ever assigned a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameRecord {
    pub owner: Option<String>,
    pub held_a_job: bool,
}

/// A job's stored log: how many lines, and their bytes (each line with its newline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCounts {
    pub lines: i64,
    pub bytes: i64,
}

/// Where [`Store::insert_job`] put a new job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// Its place in the list of jobs.
    pub seq: i64,
    /// The commit that stored it.
    pub revision: i64,
}

/// The lines of a pushed batch that a log does not have yet ([`new_log_lines`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NewLogLines<'a> {
    /// Each new line with its index in the log.
    pub lines: Vec<(i64, &'a str)>,
    /// The log's counts once they are stored.
    pub counts: LogCounts,
}

/// The lines of a batch pushed at `start_from` that a log holding `stored` does not have yet (a
/// retried batch adds nothing twice), with their indices, and the log's counts once they are
/// stored.
pub(crate) fn new_log_lines<'a>(
    start_from: i64,
    stored: LogCounts,
    lines: &[&'a str],
) -> NewLogLines<'a> {
    let mut counts = stored;
    let mut new = Vec::new();
    for (offset, line) in lines.iter().enumerate() {
        let index = start_from + offset as i64;
        if index < counts.lines {
            continue;
        }
        new.push((index, *line));
        counts.lines = index + 1;
        counts.bytes += line.len() as i64 + 1;
    }
    NewLogLines { lines: new, counts }
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
    fn identity_policies(&self) -> StoreResult<Vec<IdentityPolicyRow>>;
    fn identity_policy(&self, agent_type: &str) -> StoreResult<Option<String>>;
    /// Sets (`Some`) or removes (`None`) an agent type's registration rule (JSON). Read at each
    /// registration, never kept in memory: every replica applies the new rule at once.
    fn set_identity_policy(&mut self, agent_type: &str, policy: Option<&str>) -> StoreResult<()>;
    fn set_agent_type_time_limit(&mut self, name: &str, seconds: Option<i64>) -> StoreResult<()>;
    /// Records that an instance registered; false if it had registered before (nothing written).
    fn record_instance(&mut self, instance: &InstanceRow) -> StoreResult<bool>;
    fn instance_launched_at(&self, instance_id: &str) -> StoreResult<Option<i64>>;
    fn instance_registered(&self, instance_id: &str) -> StoreResult<bool>;
    /// What the hub has of `name` (one query: registration reads it each time).
    fn name_record(&self, name: &str) -> StoreResult<NameRecord>;

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
    fn touch_agents(&mut self, updates: &[AgentTouch]) -> StoreResult<()>;

    // --- jobs
    /// Stores a new job; returns its `seq` and revision.
    fn insert_job(&mut self, job: &JobRow) -> StoreResult<Inserted>;
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
    ) -> StoreResult<LogCounts>;
    /// A job's stored line and byte counts.
    fn log_counts(&self, job_id: &str) -> StoreResult<LogCounts>;
    /// Up to `limit` log lines from `start_from`.
    fn log_lines(&self, job_id: &str, start_from: i64, limit: i64) -> StoreResult<Vec<String>>;

    // --- moving a hub (export / import)
    fn instances(&self) -> StoreResult<Vec<InstanceRow>>;
    fn job_holders(&self) -> StoreResult<Vec<JobHolderRow>>;
    /// Jobs with `seq` above `after`, oldest first, at most `limit`.
    fn jobs_after(&self, after: i64, limit: u32) -> StoreResult<Vec<JobRow>>;
    /// Writes rows exported from another hub as they are (same `seq`s, revisions renewed).
    fn import(&mut self, batch: &ImportBatch) -> StoreResult<()>;
}

/// Rows from another hub, written by [`Store::import`] in one transaction.
#[derive(Debug, Default)]
pub struct ImportBatch {
    pub agent_types: Vec<AgentTypeImport>,
    pub instances: Vec<InstanceRow>,
    pub job_holders: Vec<JobHolderRow>,
    pub agents: Vec<AgentRow>,
    pub jobs: Vec<JobRow>,
    pub log_lines: Vec<LogLineRow>,
}

/// An agent type from another hub, with its instance-identity rule if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTypeImport {
    pub row: AgentTypeRow,
    pub identity_policy: Option<String>,
}

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLineRow {
    pub job_id: String,
    pub index: i64,
    pub line: String,
}
