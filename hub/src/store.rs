//! The hub's durable state in SQLite (WAL): agent types, agents, jobs and job log lines, with
//! schema migrations applied at start. Every function here is one transaction, so a job state
//! change is on disk (in the WAL) before the hub answers the request that caused it.

use protocol::{JobResult, JobState};
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// How hard SQLite works to keep commits across power loss. Both survive a killed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync at checkpoints only (WAL `synchronous=NORMAL`).
    Normal,
    /// fsync on every commit.
    Full,
}

const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    "CREATE TABLE agent_types (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE agents (
        name TEXT PRIMARY KEY,
        agent_type TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        job_id TEXT,
        jobs_finished INTEGER NOT NULL DEFAULT 0,
        registered_at INTEGER NOT NULL,
        last_sync_at INTEGER NOT NULL,
        interrupted_at INTEGER NOT NULL DEFAULT 0,
        disconnected_at INTEGER,
        registration TEXT NOT NULL
     );
     CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        agent_type TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        result TEXT,
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        agent TEXT,
        stop_requested INTEGER NOT NULL DEFAULT 0,
        log_token_hash TEXT,
        log_token_expires_at INTEGER,
        log_lines INTEGER NOT NULL DEFAULT 0,
        log_bytes INTEGER NOT NULL DEFAULT 0,
        log_trimmed INTEGER NOT NULL DEFAULT 0,
        queued_at INTEGER NOT NULL,
        assigned_at INTEGER,
        started_at INTEGER,
        finished_at INTEGER
     );
     CREATE INDEX jobs_by_state ON jobs(state, agent_type, seq);
     CREATE TABLE job_logs (
        job_id TEXT NOT NULL,
        line_index INTEGER NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (job_id, line_index)
     ) WITHOUT ROWID;",
    // 2: job time limits per agent type; finished jobs' secrets purged after a retention period
    "ALTER TABLE agent_types ADD COLUMN execution_time_limit INTEGER;
     ALTER TABLE jobs ADD COLUMN secrets_purged INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX jobs_to_purge ON jobs(finished_at) WHERE secrets_purged = 0;",
    // 3: registration: agent types' instance-identity rule, instances that registered (once,
    // ever), and agent names that held a job (a single-job agent never registers under one again)
    "CREATE TABLE agent_type_identity (
        agent_type TEXT PRIMARY KEY,
        policy TEXT NOT NULL
     );
     CREATE TABLE registered_instances (
        instance_id TEXT PRIMARY KEY,
        agent_type TEXT NOT NULL,
        account_id TEXT NOT NULL,
        region TEXT NOT NULL,
        registered_at INTEGER NOT NULL
     );
     CREATE TABLE job_holders (
        name TEXT PRIMARY KEY,
        agent_type TEXT NOT NULL,
        job_id TEXT NOT NULL
     );
     INSERT OR IGNORE INTO job_holders SELECT agent, agent_type, id FROM jobs WHERE agent IS NOT NULL;
     INSERT OR IGNORE INTO job_holders SELECT name, agent_type, COALESCE(job_id, '')
        FROM agents WHERE jobs_finished > 0 OR job_id IS NOT NULL;",
    // 4: the console's job timeline: when each registered instance was launched (its identity
    // document's pendingTime); the jobs list filtered by agent type
    "ALTER TABLE registered_instances ADD COLUMN launched_at INTEGER;
     CREATE INDEX jobs_by_type ON jobs(agent_type, seq);",
    // 5: a re-run's log follows the lost attempt's: the index of its first line (its agent
    // counts `start_from` from 0 within its own stream)
    "ALTER TABLE jobs ADD COLUMN log_base INTEGER NOT NULL DEFAULT 0;",
];

/// A job row, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// An agent row, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

const JOB_COLUMNS: &str = "seq, id, agent_type, spec, state, result, reason, attempts, agent, stop_requested, \
    log_token_hash, log_token_expires_at, log_lines, log_bytes, log_trimmed, queued_at, assigned_at, started_at, finished_at, log_base";

fn job_from_row(row: &rusqlite::Row) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        seq: row.get(0)?,
        id: row.get(1)?,
        agent_type: row.get(2)?,
        spec: row.get(3)?,
        state: parsed(row, 4, |text| text.parse().ok())?,
        result: match row.get::<_, Option<String>>(5)? {
            Some(_) => Some(parsed(row, 5, JobResult::parse)?),
            None => None,
        },
        reason: row.get(6)?,
        attempts: row.get(7)?,
        agent: row.get(8)?,
        stop_requested: row.get(9)?,
        log_token_hash: row.get(10)?,
        log_token_expires_at: row.get(11)?,
        log_lines: row.get(12)?,
        log_bytes: row.get(13)?,
        log_trimmed: row.get(14)?,
        queued_at: row.get(15)?,
        assigned_at: row.get(16)?,
        started_at: row.get(17)?,
        finished_at: row.get(18)?,
        log_base: row.get(19)?,
    })
}

/// A text column holding one of an enum's wire strings.
fn parsed<T>(
    row: &rusqlite::Row,
    index: usize,
    parse: impl Fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            Type::Text,
            format!("unknown value '{text}'").into(),
        )
    })
}

const AGENT_COLUMNS: &str =
    "name, agent_type, token_hash, state, job_id, jobs_finished, registered_at, last_sync_at, interrupted_at, disconnected_at, registration";

fn agent_from_row(row: &rusqlite::Row) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        name: row.get(0)?,
        agent_type: row.get(1)?,
        token_hash: row.get(2)?,
        state: row.get(3)?,
        job_id: row.get(4)?,
        jobs_finished: row.get(5)?,
        registered_at: row.get(6)?,
        last_sync_at: row.get(7)?,
        interrupted_at: row.get(8)?,
        disconnected_at: row.get(9)?,
        registration: row.get(10)?,
    })
}

pub struct Store {
    connection: Connection,
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

impl Store {
    /// Opens (creating if needed) `hub.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path, durability: Durability) -> StoreResult<Store> {
        let connection = Connection::open(data_dir.join("hub.db"))?;
        Store::configure(connection, durability)
    }

    /// An in-memory store (tests).
    pub fn open_in_memory() -> StoreResult<Store> {
        Store::configure(Connection::open_in_memory()?, Durability::Normal)
    }

    fn configure(connection: Connection, durability: Durability) -> StoreResult<Store> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // Checkpoints (which fsync) run from a second connection off the request path.
        connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        connection.pragma_update(
            None,
            "synchronous",
            if durability == Durability::Full {
                "FULL"
            } else {
                "NORMAL"
            },
        )?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // Purged secrets are overwritten with zeros, not left in free pages.
        connection.pragma_update(None, "secure_delete", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store { connection };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> StoreResult<()> {
        let version: i64 = self
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "the database has schema version {version}, newer than this hub knows ({}); upgrade the hub",
                MIGRATIONS.len()
            )));
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let transaction = self.connection.transaction()?;
            transaction.execute_batch(migration)?;
            transaction.pragma_update(None, "user_version", (index + 1) as i64)?;
            transaction.commit()?;
        }
        Ok(())
    }

    /// Copies the WAL into the database file from a separate connection, without blocking the
    /// main connection's writers (a PASSIVE checkpoint). Returns the WAL pages still pending.
    pub fn checkpoint(data_dir: &Path) -> StoreResult<i64> {
        let connection = Connection::open(data_dir.join("hub.db"))?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let pending: (i64, i64, i64) =
            connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
        Ok(pending.1 - pending.2)
    }

    pub fn schema_version(&self) -> StoreResult<i64> {
        Ok(self
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    // --- agent types

    pub fn insert_agent_type(&self, name: &str, token_hash: &str, now: i64) -> StoreResult<bool> {
        let inserted = self.connection.execute(
            "INSERT OR IGNORE INTO agent_types (name, token_hash, created_at) VALUES (?1, ?2, ?3)",
            params![name, token_hash, now],
        )?;
        Ok(inserted == 1)
    }

    pub fn agent_types(&self) -> StoreResult<Vec<(String, String, i64)>> {
        let mut statement = self
            .connection
            .prepare("SELECT name, token_hash, created_at FROM agent_types ORDER BY name")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // --- registration (agent types' identity rule, instances, names that held a job)

    /// Creates an agent type and, when given, its instance-identity rule (JSON), in one
    /// transaction: a type never exists without the rule it was created with.
    pub fn insert_agent_type_with_identity(
        &mut self,
        name: &str,
        token_hash: &str,
        now: i64,
        identity_policy: &str,
    ) -> StoreResult<bool> {
        let transaction = self.connection.transaction()?;
        let inserted = transaction.execute(
            "INSERT OR IGNORE INTO agent_types (name, token_hash, created_at) VALUES (?1, ?2, ?3)",
            params![name, token_hash, now],
        )? == 1;
        if inserted {
            transaction.execute(
                "INSERT INTO agent_type_identity (agent_type, policy) VALUES (?1, ?2)",
                params![name, identity_policy],
            )?;
        }
        transaction.commit()?;
        Ok(inserted)
    }

    /// The instance-identity rule (JSON) of each agent type that has one.
    pub fn identity_policies(&self) -> StoreResult<Vec<(String, String)>> {
        let mut statement = self
            .connection
            .prepare("SELECT agent_type, policy FROM agent_type_identity")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The instance-identity rule (JSON) of one agent type, if it has one.
    pub fn identity_policy(&self, agent_type: &str) -> StoreResult<Option<String>> {
        Ok(self
            .connection
            .query_row(
                "SELECT policy FROM agent_type_identity WHERE agent_type = ?1",
                params![agent_type],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Records that an instance registered; false if it had registered before (nothing written).
    pub fn record_instance(
        &self,
        instance_id: &str,
        agent_type: &str,
        account_id: &str,
        region: &str,
        (now, launched_at): (i64, Option<i64>),
    ) -> StoreResult<bool> {
        let inserted = self.connection.execute(
            "INSERT OR IGNORE INTO registered_instances (instance_id, agent_type, account_id, region, registered_at, launched_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![instance_id, agent_type, account_id, region, now, launched_at],
        )?;
        Ok(inserted == 1)
    }

    /// When the instance `instance_id` was launched, if it registered with a launch time.
    pub fn instance_launched_at(&self, instance_id: &str) -> StoreResult<Option<i64>> {
        let launched = self
            .connection
            .query_row(
                "SELECT launched_at FROM registered_instances WHERE instance_id = ?1",
                params![instance_id],
                |row| row.get::<_, Option<i64>>(0),
            )
            .optional()?;
        Ok(launched.flatten())
    }

    /// One agent (connected or not) by name.
    pub fn agent(&self, name: &str) -> StoreResult<Option<AgentRow>> {
        Ok(self
            .connection
            .query_row(
                &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE name = ?1"),
                params![name],
                agent_from_row,
            )
            .optional()?)
    }

    pub fn instance_registered(&self, instance_id: &str) -> StoreResult<bool> {
        self.exists("registered_instances WHERE instance_id = ?1", instance_id)
    }

    /// Whether an agent of this name (of any type) was ever assigned a job.
    pub fn name_held_a_job(&self, name: &str) -> StoreResult<bool> {
        self.exists("job_holders WHERE name = ?1", name)
    }

    /// Whether `SELECT 1 FROM <from_where>` with `?1 = key` finds a row.
    fn exists(&self, from_where: &str, key: &str) -> StoreResult<bool> {
        let sql = format!("SELECT EXISTS(SELECT 1 FROM {from_where})");
        let found = self
            .connection
            .query_row(&sql, params![key], |row| row.get(0))?;
        Ok(found)
    }

    // --- agents

    /// Records when each agent last synced (batched; not a job state change).
    pub fn touch_agents(&mut self, updates: &[(String, i64, String, i64)]) -> StoreResult<()> {
        let transaction = self.connection.transaction()?;
        {
            let mut statement = transaction
                .prepare_cached("UPDATE agents SET last_sync_at = ?2, state = ?3, interrupted_at = ?4 WHERE name = ?1")?;
            for (name, last_sync_at, state, interrupted_at) in updates {
                statement.execute(params![name, last_sync_at, state, interrupted_at])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    pub fn agents(&self, include_disconnected: bool) -> StoreResult<Vec<AgentRow>> {
        let filter = if include_disconnected {
            ""
        } else {
            "WHERE disconnected_at IS NULL"
        };
        let mut statement = self.connection.prepare(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents {filter} ORDER BY name"
        ))?;
        let rows = statement.query_map([], agent_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // --- jobs

    pub fn insert_job(&self, job: &JobRow) -> StoreResult<i64> {
        self.connection.execute(
            "INSERT INTO jobs (id, agent_type, spec, state, attempts, queued_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                job.id,
                job.agent_type,
                job.spec,
                job.state.as_str(),
                job.attempts,
                job.queued_at
            ],
        )?;
        Ok(self.connection.last_insert_rowid())
    }

    /// Writes changed jobs and agents in one transaction: all of it is committed, or none.
    pub fn commit(&mut self, jobs: &[&JobRow], agents: &[&AgentRow]) -> StoreResult<()> {
        let transaction = self.connection.transaction()?;
        for job in jobs {
            write_job(&transaction, job)?;
            record_job_holder(&transaction, job)?;
        }
        for agent in agents {
            write_agent(&transaction, agent)?;
        }
        transaction.commit()?;
        Ok(())
    }

    pub fn job(&self, id: &str) -> StoreResult<Option<JobRow>> {
        Ok(self
            .connection
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                params![id],
                job_from_row,
            )
            .optional()?)
    }

    /// Jobs not in a final state, oldest first.
    pub fn unfinished_jobs(&self) -> StoreResult<Vec<JobRow>> {
        let mut statement = self.connection.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state != ?1 ORDER BY seq"
        ))?;
        let rows = statement.query_map(params![JobState::Finished.as_str()], job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest jobs first, optionally in one state.
    pub fn list_jobs(&self, state: Option<JobState>, limit: u32) -> StoreResult<Vec<JobRow>> {
        let mut statement = self.connection.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY seq DESC LIMIT ?2"
        ))?;
        let state = state.map(JobState::as_str);
        let rows = statement.query_map(params![state, limit], job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of jobs for the console, newest first: those matching `query`, older than
    /// `query.before` (a `seq`) when set, and whether more follow.
    pub fn query_jobs(&self, query: &JobQuery) -> StoreResult<(Vec<JobRow>, bool)> {
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR agent_type = ?2)
               AND (?3 IS NULL OR instr(lower(json_extract(spec, '$.name')), lower(?3)) > 0)
               AND (?4 IS NULL OR seq < ?4)
             ORDER BY seq DESC LIMIT ?5"
        ))?;
        let state = query.state.map(JobState::as_str);
        let fetch = i64::from(query.limit) + 1;
        let arguments = params![state, query.agent_type, query.name, query.before, fetch];
        let mut rows: Vec<JobRow> = statement
            .query_map(arguments, job_from_row)?
            .collect::<Result<_, _>>()?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        Ok((rows, more))
    }

    // --- logs

    /// Stores lines at `start_from..`; lines already stored at those indices are kept (a retried
    /// batch is idempotent). Returns the job's line and byte counts afterwards.
    pub fn append_log(
        &mut self,
        job_id: &str,
        start_from: i64,
        lines: &[&str],
    ) -> StoreResult<(i64, i64)> {
        let transaction = self.connection.transaction()?;
        let (mut count, mut bytes): (i64, i64) = transaction.query_row(
            "SELECT log_lines, log_bytes FROM jobs WHERE id = ?1",
            params![job_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT OR IGNORE INTO job_logs (job_id, line_index, line) VALUES (?1, ?2, ?3)",
            )?;
            for (offset, line) in lines.iter().enumerate() {
                let index = start_from + offset as i64;
                if index < count {
                    continue;
                }
                insert.execute(params![job_id, index, line])?;
                count = index + 1;
                bytes += line.len() as i64 + 1;
            }
        }
        transaction.execute(
            "UPDATE jobs SET log_lines = ?2, log_bytes = ?3 WHERE id = ?1",
            params![job_id, count, bytes],
        )?;
        transaction.commit()?;
        Ok((count, bytes))
    }

    // --- limits and retention

    /// Sets an agent type's default job time limit (`None`: the hub's default).
    pub fn set_agent_type_time_limit(&self, name: &str, seconds: Option<i64>) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE agent_types SET execution_time_limit = ?2 WHERE name = ?1",
            params![name, seconds],
        )?;
        Ok(())
    }

    /// The agent types that have their own default job time limit.
    pub fn agent_type_time_limits(&self) -> StoreResult<Vec<(String, i64)>> {
        let mut statement = self.connection.prepare(
            "SELECT name, execution_time_limit FROM agent_types WHERE execution_time_limit IS NOT NULL",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Rewrites the spec of each job finished before `finished_before` whose secrets are still
    /// there with `redact(spec)`, in one transaction. Returns how many jobs were purged.
    pub fn purge_job_secrets(
        &mut self,
        finished_before: i64,
        redact: &dyn Fn(&str) -> String,
    ) -> StoreResult<usize> {
        let transaction = self.connection.transaction()?;
        let due: Vec<(String, String)> = {
            let mut statement = transaction.prepare(
                "SELECT id, spec FROM jobs WHERE secrets_purged = 0 AND finished_at < ?1",
            )?;
            let rows = statement.query_map(params![finished_before], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, spec) in &due {
            transaction.execute(
                "UPDATE jobs SET spec = ?2, secrets_purged = 1 WHERE id = ?1",
                params![id, redact(spec)],
            )?;
        }
        transaction.commit()?;
        Ok(due.len())
    }

    /// Up to `limit` log lines from `start_from`.
    pub fn log_lines(&self, job_id: &str, start_from: i64, limit: i64) -> StoreResult<Vec<String>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT line FROM job_logs WHERE job_id = ?1 AND line_index >= ?2 ORDER BY line_index LIMIT ?3",
        )?;
        let rows = statement.query_map(params![job_id, start_from, limit], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn write_job(connection: &Connection, job: &JobRow) -> StoreResult<()> {
    connection.execute(
        "UPDATE jobs SET state = ?2, result = ?3, reason = ?4, attempts = ?5, agent = ?6, stop_requested = ?7,
           log_token_hash = ?8, log_token_expires_at = ?9, log_trimmed = ?10, assigned_at = ?11,
           started_at = ?12, finished_at = ?13, log_base = ?14
         WHERE id = ?1",
        params![
            job.id,
            job.state.as_str(),
            job.result.map(JobResult::as_str),
            job.reason,
            job.attempts,
            job.agent,
            job.stop_requested,
            job.log_token_hash,
            job.log_token_expires_at,
            job.log_trimmed,
            job.assigned_at,
            job.started_at,
            job.finished_at,
            job.log_base
        ],
    )?;
    Ok(())
}

/// Remembers, for good, that the agent a job was assigned to held a job (same transaction as the
/// assignment, so no crash can forget it).
fn record_job_holder(connection: &Connection, job: &JobRow) -> StoreResult<()> {
    if let (JobState::Assigned, Some(agent)) = (job.state, &job.agent) {
        connection.execute(
            "INSERT OR IGNORE INTO job_holders (name, agent_type, job_id) VALUES (?1, ?2, ?3)",
            params![agent, job.agent_type, job.id],
        )?;
    }
    Ok(())
}

fn write_agent(connection: &Connection, agent: &AgentRow) -> StoreResult<()> {
    connection.execute(
        &format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(name) DO UPDATE SET agent_type = excluded.agent_type, token_hash = excluded.token_hash,
               state = excluded.state, job_id = excluded.job_id, jobs_finished = excluded.jobs_finished,
               registered_at = excluded.registered_at, last_sync_at = excluded.last_sync_at,
               interrupted_at = excluded.interrupted_at, disconnected_at = excluded.disconnected_at,
               registration = excluded.registration"
        ),
        params![
            agent.name,
            agent.agent_type,
            agent.token_hash,
            agent.state,
            agent.job_id,
            agent.jobs_finished,
            agent.registered_at,
            agent.last_sync_at,
            agent.interrupted_at,
            agent.disconnected_at,
            agent.registration
        ],
    )?;
    Ok(())
}
