//! The hub's durable state in SQLite (WAL), the embedded default: agent types, agents, jobs and
//! job log lines, with schema migrations applied at start. Every function here is one
//! transaction, so a job state change is on disk (in the WAL) before the hub answers the request
//! that caused it. One hub process owns the file; revisions and conditional writes (see
//! `store/mod.rs`) work here too, so the hub's code is the same on both stores.

use super::rows::{
    agent_from, agent_type_from, identity_policy_from, instance_from, job_from, job_holder_from,
    Columns, AGENT_COLUMNS, AGENT_TYPE_COLUMNS, IDENTITY_POLICY_COLUMNS, INSTANCE_COLUMNS,
    JOB_COLUMNS, JOB_HOLDER_COLUMNS,
};
use super::{
    AgentRow, AgentStatus, AgentTouch, AgentTypeRow, Durability, Feed, IdentityPolicyRow,
    ImportBatch, Inserted, InstanceRow, JobHolderRow, JobQuery, JobRow, LogCounts, NameRecord,
    Store, StoreError, StoreResult,
};
use protocol::{JobResult, JobState};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Arc;

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
    // 6: revisions (every commit takes the next one; `changes_since` reads rows by it) and a
    // user's shutdown request stored with the agent
    "CREATE TABLE hub_revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
     INSERT INTO hub_revision VALUES (1, 1);
     ALTER TABLE jobs ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE agents ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE agent_types ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE agents ADD COLUMN shutdown_requested INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX jobs_by_revision ON jobs(revision);
     CREATE INDEX agents_by_revision ON agents(revision);",
];

pub struct SqliteStore {
    connection: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) `hub.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path, durability: Durability) -> StoreResult<SqliteStore> {
        let connection = Connection::open(data_dir.join("hub.db"))?;
        SqliteStore::configure(connection, durability)
    }

    /// An in-memory store (tests).
    pub(crate) fn open_in_memory() -> StoreResult<SqliteStore> {
        SqliteStore::configure(Connection::open_in_memory()?, Durability::Normal)
    }

    fn configure(connection: Connection, durability: Durability) -> StoreResult<SqliteStore> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // Checkpoints (which fsync) run from a second connection off the request path.
        connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        connection.pragma_update(None, "synchronous", synchronous)?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // Purged secrets are overwritten with zeros, not left in free pages.
        connection.pragma_update(None, "secure_delete", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = SqliteStore { connection };
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

    /// Whether `SELECT 1 FROM <from_where>` with `?1 = key` finds a row.
    fn exists(&self, from_where: &str, key: &str) -> StoreResult<bool> {
        let sql = format!("SELECT EXISTS(SELECT 1 FROM {from_where})");
        let found = self
            .connection
            .query_row(&sql, params![key], |row| row.get(0))?;
        Ok(found)
    }

    /// The rows `sql` selects, each read by `map` (by column name, `store/rows.rs`).
    fn select<T>(
        &self,
        sql: &str,
        arguments: impl rusqlite::Params,
        map: fn(&dyn Columns) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let mut statement = self.connection.prepare_cached(sql)?;
        let mut rows = statement.query(arguments)?;
        let mut mapped = Vec::new();
        while let Some(row) = rows.next()? {
            mapped.push(map(row)?);
        }
        Ok(mapped)
    }

    /// The row `sql` selects, if any.
    fn select_one<T>(
        &self,
        sql: &str,
        arguments: impl rusqlite::Params,
        map: fn(&dyn Columns) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        Ok(self.select(sql, arguments, map)?.into_iter().next())
    }
}

/// Takes the next revision inside `transaction` (see `store/mod.rs`).
fn next_revision(transaction: &Connection) -> StoreResult<i64> {
    Ok(transaction.query_row(
        "UPDATE hub_revision SET value = value + 1 WHERE id = 1 RETURNING value",
        [],
        |row| row.get(0),
    )?)
}

impl Store for SqliteStore {
    fn schema_version(&self) -> StoreResult<i64> {
        Ok(self
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    fn shared(&self) -> bool {
        false
    }

    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    fn others_writing(&self, _now: i64) -> bool {
        false
    }

    fn try_lead(&mut self) -> StoreResult<bool> {
        Ok(true)
    }

    fn head_revision(&self) -> StoreResult<i64> {
        Ok(self
            .connection
            .query_row("SELECT value FROM hub_revision WHERE id = 1", [], |row| {
                row.get(0)
            })?)
    }

    fn changes_since(&self, revision: i64) -> StoreResult<Feed> {
        let transaction = self.connection.unchecked_transaction()?;
        let head = self.head_revision()?;
        let agent_types = self.select(
            &format!("SELECT {AGENT_TYPE_COLUMNS} FROM agent_types WHERE revision > ?1"),
            params![revision],
            agent_type_from,
        )?;
        let jobs = self.select(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE revision > ?1 ORDER BY seq"),
            params![revision],
            job_from,
        )?;
        let agents = self.select(
            &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE revision > ?1"),
            params![revision],
            agent_from,
        )?;
        transaction.commit()?;
        Ok(Feed {
            revision: head,
            agent_types,
            jobs,
            agents,
        })
    }

    fn insert_agent_type(&mut self, name: &str, token_hash: &str, now: i64) -> StoreResult<bool> {
        let transaction = self.connection.transaction()?;
        let revision = next_revision(&transaction)?;
        let inserted = transaction.execute(
            "INSERT OR IGNORE INTO agent_types (name, token_hash, created_at, revision) VALUES (?1, ?2, ?3, ?4)",
            params![name, token_hash, now, revision],
        )? == 1;
        transaction.commit()?;
        Ok(inserted)
    }

    fn insert_agent_type_with_identity(
        &mut self,
        name: &str,
        token_hash: &str,
        now: i64,
        identity_policy: &str,
    ) -> StoreResult<bool> {
        let transaction = self.connection.transaction()?;
        let revision = next_revision(&transaction)?;
        let inserted = transaction.execute(
            "INSERT OR IGNORE INTO agent_types (name, token_hash, created_at, revision) VALUES (?1, ?2, ?3, ?4)",
            params![name, token_hash, now, revision],
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

    fn agent_types(&self) -> StoreResult<Vec<AgentTypeRow>> {
        self.select(
            &format!("SELECT {AGENT_TYPE_COLUMNS} FROM agent_types ORDER BY name"),
            [],
            agent_type_from,
        )
    }

    fn identity_policies(&self) -> StoreResult<Vec<IdentityPolicyRow>> {
        self.select(
            &format!(
                "SELECT {IDENTITY_POLICY_COLUMNS} FROM agent_type_identity ORDER BY agent_type"
            ),
            [],
            identity_policy_from,
        )
    }

    fn identity_policy(&self, agent_type: &str) -> StoreResult<Option<String>> {
        Ok(self
            .connection
            .query_row(
                "SELECT policy FROM agent_type_identity WHERE agent_type = ?1",
                params![agent_type],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn set_identity_policy(&mut self, agent_type: &str, policy: Option<&str>) -> StoreResult<()> {
        match policy {
            Some(policy) => self.connection.execute(
                "INSERT INTO agent_type_identity (agent_type, policy) VALUES (?1, ?2)
                 ON CONFLICT (agent_type) DO UPDATE SET policy = excluded.policy",
                params![agent_type, policy],
            )?,
            None => self.connection.execute(
                "DELETE FROM agent_type_identity WHERE agent_type = ?1",
                params![agent_type],
            )?,
        };
        Ok(())
    }

    fn set_agent_type_time_limit(&mut self, name: &str, seconds: Option<i64>) -> StoreResult<()> {
        let transaction = self.connection.transaction()?;
        let revision = next_revision(&transaction)?;
        transaction.execute(
            "UPDATE agent_types SET execution_time_limit = ?2, revision = ?3 WHERE name = ?1",
            params![name, seconds, revision],
        )?;
        transaction.commit()?;
        Ok(())
    }

    fn record_instance(&mut self, instance: &InstanceRow) -> StoreResult<bool> {
        let inserted = self.connection.execute(
            &format!(
                "INSERT OR IGNORE INTO registered_instances ({INSTANCE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            instance_params(instance),
        )?;
        Ok(inserted == 1)
    }

    fn instance_launched_at(&self, instance_id: &str) -> StoreResult<Option<i64>> {
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

    fn instance_registered(&self, instance_id: &str) -> StoreResult<bool> {
        self.exists("registered_instances WHERE instance_id = ?1", instance_id)
    }

    fn name_record(&self, name: &str) -> StoreResult<NameRecord> {
        // Rank 0: a job holder (the name held a job, and belongs to that job's type).
        let sql = "SELECT agent_type, rank FROM (
               SELECT agent_type, 0 AS rank FROM job_holders WHERE name = ?1
               UNION ALL SELECT agent_type, 1 AS rank FROM agents WHERE name = ?1
             ) ORDER BY rank LIMIT 1";
        let first: Option<(String, i64)> = self
            .connection
            .query_row(sql, params![name], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        Ok(NameRecord {
            held_a_job: first.as_ref().is_some_and(|(_, rank)| *rank == 0),
            owner: first.map(|(owner, _)| owner),
        })
    }

    fn agent(&self, name: &str) -> StoreResult<Option<AgentRow>> {
        self.select_one(
            &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE name = ?1"),
            params![name],
            agent_from,
        )
    }

    fn agents(&self, include_disconnected: bool) -> StoreResult<Vec<AgentRow>> {
        let filter = if include_disconnected {
            ""
        } else {
            "WHERE disconnected_at IS NULL"
        };
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents {filter} ORDER BY name");
        self.select(&sql, [], agent_from)
    }

    fn live_agents(&self, lost_since: i64) -> StoreResult<Vec<AgentRow>> {
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents
             WHERE disconnected_at IS NULL OR (state = ?1 AND last_sync_at >= ?2) ORDER BY name"
        );
        self.select(
            &sql,
            params![AgentStatus::Lost.as_str(), lost_since],
            agent_from,
        )
    }

    fn prune_agents(&mut self, left_before: i64) -> StoreResult<usize> {
        let pruned = self.connection.execute(
            "DELETE FROM agents WHERE rowid IN (SELECT rowid FROM agents
               WHERE disconnected_at < ?1 AND last_sync_at < ?1 LIMIT ?2)",
            params![left_before, super::PRUNE_BATCH],
        )?;
        Ok(pruned)
    }

    fn touch_agents(&mut self, updates: &[AgentTouch]) -> StoreResult<()> {
        let transaction = self.connection.transaction()?;
        {
            let mut statement = transaction.prepare_cached(
                "UPDATE agents SET last_sync_at = max(last_sync_at, ?2), state = ?3,
                   interrupted_at = max(interrupted_at, ?4)
                 WHERE name = ?1 AND disconnected_at IS NULL",
            )?;
            for touch in updates {
                statement.execute(params![
                    touch.name,
                    touch.last_sync_at,
                    touch.state.as_str(),
                    touch.interrupted_at
                ])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    fn insert_job(&mut self, job: &JobRow) -> StoreResult<Inserted> {
        let transaction = self.connection.transaction()?;
        let revision = next_revision(&transaction)?;
        transaction.execute(
            "INSERT INTO jobs (id, agent_type, spec, state, attempts, queued_at, revision) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                job.id,
                job.agent_type,
                job.spec,
                job.state.as_str(),
                job.attempts,
                job.queued_at,
                revision
            ],
        )?;
        let seq = transaction.last_insert_rowid();
        transaction.commit()?;
        Ok(Inserted { seq, revision })
    }

    fn commit(&mut self, jobs: &[&JobRow], agents: &[&AgentRow]) -> StoreResult<i64> {
        let transaction = self.connection.transaction()?;
        let revision = next_revision(&transaction)?;
        for job in jobs {
            write_job(&transaction, job, revision)?;
            record_job_holder(&transaction, job)?;
        }
        for agent in agents {
            write_agent(&transaction, agent, revision)?;
        }
        transaction.commit()?;
        Ok(revision)
    }

    fn job(&self, id: &str) -> StoreResult<Option<JobRow>> {
        self.select_one(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
            params![id],
            job_from,
        )
    }

    fn unfinished_jobs(&self) -> StoreResult<Vec<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state != ?1 ORDER BY seq");
        self.select(&sql, params![JobState::Finished.as_str()], job_from)
    }

    fn list_jobs(&self, state: Option<JobState>, limit: u32) -> StoreResult<Vec<JobRow>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY seq DESC LIMIT ?2"
        );
        self.select(&sql, params![state.map(JobState::as_str), limit], job_from)
    }

    fn query_jobs(&self, query: &JobQuery) -> StoreResult<(Vec<JobRow>, bool)> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR agent_type = ?2)
               AND (?3 IS NULL OR instr(lower(json_extract(spec, '$.name')), lower(?3)) > 0)
               AND (?4 IS NULL OR seq < ?4)
             ORDER BY seq DESC LIMIT ?5"
        );
        let state = query.state.map(JobState::as_str);
        let fetch = query.fetch();
        let arguments = params![state, query.agent_type, query.name, query.before, fetch];
        Ok(query.page(self.select(&sql, arguments, job_from)?))
    }

    fn purge_job_secrets(
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
                Ok((row.get("id")?, row.get("spec")?))
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

    fn append_log(
        &mut self,
        job_id: &str,
        start_from: i64,
        lines: &[&str],
    ) -> StoreResult<LogCounts> {
        let transaction = self.connection.transaction()?;
        let stored = log_counts_in(&transaction, job_id)?;
        let new = super::new_log_lines(start_from, stored, lines);
        {
            let mut insert = transaction.prepare_cached(
                "INSERT OR IGNORE INTO job_logs (job_id, line_index, line) VALUES (?1, ?2, ?3)",
            )?;
            for (index, line) in new.lines {
                insert.execute(params![job_id, index, line])?;
            }
        }
        transaction.execute(
            "UPDATE jobs SET log_lines = ?2, log_bytes = ?3 WHERE id = ?1",
            params![job_id, new.counts.lines, new.counts.bytes],
        )?;
        transaction.commit()?;
        Ok(new.counts)
    }

    fn log_counts(&self, job_id: &str) -> StoreResult<LogCounts> {
        log_counts_in(&self.connection, job_id)
    }

    fn log_lines(&self, job_id: &str, start_from: i64, limit: i64) -> StoreResult<Vec<String>> {
        self.select(
            "SELECT line FROM job_logs WHERE job_id = ?1 AND line_index >= ?2 ORDER BY line_index LIMIT ?3",
            params![job_id, start_from, limit],
            |row| row.text("line"),
        )
    }

    fn instances(&self) -> StoreResult<Vec<InstanceRow>> {
        self.select(
            &format!("SELECT {INSTANCE_COLUMNS} FROM registered_instances ORDER BY instance_id"),
            [],
            instance_from,
        )
    }

    fn job_holders(&self) -> StoreResult<Vec<JobHolderRow>> {
        self.select(
            &format!("SELECT {JOB_HOLDER_COLUMNS} FROM job_holders ORDER BY name"),
            [],
            job_holder_from,
        )
    }

    fn jobs_after(&self, after: i64, limit: u32) -> StoreResult<Vec<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE seq > ?1 ORDER BY seq LIMIT ?2");
        self.select(&sql, params![after, limit], job_from)
    }

    fn import(&mut self, batch: &ImportBatch) -> StoreResult<()> {
        let transaction = self.connection.transaction()?;
        let revision = next_revision(&transaction)?;
        import_batch(&transaction, batch, revision)?;
        transaction.commit()?;
        Ok(())
    }
}

/// A job's stored log counts.
fn log_counts_in(connection: &Connection, job_id: &str) -> StoreResult<LogCounts> {
    Ok(connection.query_row(
        "SELECT log_lines, log_bytes FROM jobs WHERE id = ?1",
        params![job_id],
        |row| {
            Ok(LogCounts {
                lines: row.get("log_lines")?,
                bytes: row.get("log_bytes")?,
            })
        },
    )?)
}

/// An instance's columns, in [`INSTANCE_COLUMNS`]' order.
fn instance_params(instance: &InstanceRow) -> [&dyn rusqlite::ToSql; 6] {
    [
        &instance.instance_id,
        &instance.agent_type,
        &instance.account_id,
        &instance.region,
        &instance.registered_at,
        &instance.launched_at,
    ]
}

/// Writes a job's changed columns if its stored revision is still the row's.
fn write_job(connection: &Connection, job: &JobRow, revision: i64) -> StoreResult<()> {
    let written = connection.execute(
        "UPDATE jobs SET state = ?2, result = ?3, reason = ?4, attempts = ?5, agent = ?6, stop_requested = ?7,
           log_token_hash = ?8, log_token_expires_at = ?9, log_trimmed = ?10, assigned_at = ?11,
           started_at = ?12, finished_at = ?13, log_base = ?14, revision = ?15
         WHERE id = ?1 AND revision = ?16",
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
            job.log_base,
            revision,
            job.revision
        ],
    )?;
    match written {
        1 => Ok(()),
        _ => Err(StoreError::Conflict),
    }
}

/// Remembers, for good, that the agent a job was assigned to held a job (same transaction as the
/// assignment, so no crash can forget it).
fn record_job_holder(connection: &Connection, job: &JobRow) -> StoreResult<()> {
    if let (JobState::Assigned, Some(agent)) = (job.state, &job.agent) {
        connection.execute(
            &format!(
                "INSERT OR IGNORE INTO job_holders ({JOB_HOLDER_COLUMNS}) VALUES (?1, ?2, ?3)"
            ),
            params![agent, job.agent_type, job.id],
        )?;
    }
    Ok(())
}

/// Writes an agent row if its stored revision is still the row's (revision 0: a new
/// registration, which may replace only a row that is not live).
fn write_agent(connection: &Connection, agent: &AgentRow, revision: i64) -> StoreResult<()> {
    let written = connection.execute(
        &format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT(name) DO UPDATE SET agent_type = excluded.agent_type, token_hash = excluded.token_hash,
               state = excluded.state, job_id = excluded.job_id, jobs_finished = excluded.jobs_finished,
               registered_at = excluded.registered_at,
               last_sync_at = max(agents.last_sync_at, excluded.last_sync_at),
               interrupted_at = excluded.interrupted_at, disconnected_at = excluded.disconnected_at,
               registration = excluded.registration, shutdown_requested = excluded.shutdown_requested,
               revision = excluded.revision
             WHERE agents.revision = ?14 OR (?14 = 0 AND agents.disconnected_at IS NOT NULL)"
        ),
        params![
            agent.name,
            agent.agent_type,
            agent.token_hash,
            agent.state.as_str(),
            agent.job_id,
            agent.jobs_finished,
            agent.registered_at,
            agent.last_sync_at,
            agent.interrupted_at,
            agent.disconnected_at,
            agent.registration,
            agent.shutdown_requested,
            revision,
            agent.revision
        ],
    )?;
    match written {
        1 => Ok(()),
        _ => Err(StoreError::Conflict),
    }
}

/// Writes an export's rows into an empty hub's tables as they are.
fn import_batch(connection: &Connection, batch: &ImportBatch, revision: i64) -> StoreResult<()> {
    for imported in &batch.agent_types {
        let row = &imported.row;
        connection.execute(
            "INSERT INTO agent_types (name, token_hash, created_at, execution_time_limit, revision)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                row.name,
                row.token_hash,
                row.created_at,
                row.time_limit,
                revision
            ],
        )?;
        if let Some(policy) = &imported.identity_policy {
            connection.execute(
                "INSERT INTO agent_type_identity (agent_type, policy) VALUES (?1, ?2)",
                params![row.name, policy],
            )?;
        }
    }
    for instance in &batch.instances {
        connection.execute(
            &format!(
                "INSERT INTO registered_instances ({INSTANCE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            instance_params(instance),
        )?;
    }
    for holder in &batch.job_holders {
        connection.execute(
            &format!("INSERT INTO job_holders ({JOB_HOLDER_COLUMNS}) VALUES (?1, ?2, ?3)"),
            params![holder.name, holder.agent_type, holder.job_id],
        )?;
    }
    for agent in &batch.agents {
        write_agent(
            connection,
            &AgentRow {
                revision: 0,
                ..agent.clone()
            },
            revision,
        )?;
    }
    for job in &batch.jobs {
        import_job(connection, job, revision)?;
    }
    for log_line in &batch.log_lines {
        connection.execute(
            "INSERT INTO job_logs (job_id, line_index, line) VALUES (?1, ?2, ?3)",
            params![log_line.job_id, log_line.index, log_line.line],
        )?;
    }
    Ok(())
}

/// Inserts a job with every column as exported (its `seq` kept).
fn import_job(connection: &Connection, job: &JobRow, revision: i64) -> StoreResult<()> {
    connection.execute(
        "INSERT INTO jobs (seq, id, agent_type, spec, state, attempts, queued_at, revision, log_lines, log_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            job.seq,
            job.id,
            job.agent_type,
            job.spec,
            job.state.as_str(),
            job.attempts,
            job.queued_at,
            revision,
            job.log_lines,
            job.log_bytes
        ],
    )?;
    write_job(
        connection,
        &JobRow {
            revision,
            ..job.clone()
        },
        revision,
    )
}
