//! The PostgreSQL schema and its migrations, and the row writes that need every column. The
//! schema mirrors SQLite's (`store/sqlite.rs`) with PostgreSQL's types; its version history is its
//! own, starting at the shape SQLite reached at its version 6. Migrations run in one transaction
//! under an advisory lock, so replicas started together migrate once.

use super::super::rows::{AGENT_COLUMNS, INSTANCE_COLUMNS, JOB_HOLDER_COLUMNS};
use super::super::{
    AgentRow, ImportBatch, InstanceRow, JobRow, LogLineRow, StoreError, StoreResult,
};
use super::connection::{Connection, Transaction};
use futures_executor::block_on;
use protocol::JobResult;
use std::sync::LazyLock;
use tokio_postgres::types::ToSql;

/// The advisory lock migrations hold ("flotmigr").
const MIGRATION_LOCK: i64 = 0x666c_6f74_6d69_6772;

const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's version 6 (agent types with identity rules and time limits,
    // agents, jobs with log bases, log lines, registered instances, job holders, revisions)
    "CREATE TABLE hub_revision (id INTEGER PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL);
     INSERT INTO hub_revision VALUES (1, 1);
     CREATE TABLE agent_types (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        execution_time_limit BIGINT,
        revision BIGINT NOT NULL
     );
     CREATE INDEX agent_types_by_revision ON agent_types(revision);
     CREATE TABLE agent_type_identity (agent_type TEXT PRIMARY KEY, policy TEXT NOT NULL);
     CREATE TABLE registered_instances (
        instance_id TEXT PRIMARY KEY,
        agent_type TEXT NOT NULL,
        account_id TEXT NOT NULL,
        region TEXT NOT NULL,
        registered_at BIGINT NOT NULL,
        launched_at BIGINT
     );
     CREATE TABLE job_holders (name TEXT PRIMARY KEY, agent_type TEXT NOT NULL, job_id TEXT NOT NULL);
     CREATE TABLE agents (
        name TEXT PRIMARY KEY,
        agent_type TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        job_id TEXT,
        jobs_finished BIGINT NOT NULL DEFAULT 0,
        registered_at BIGINT NOT NULL,
        last_sync_at BIGINT NOT NULL,
        interrupted_at BIGINT NOT NULL DEFAULT 0,
        disconnected_at BIGINT,
        registration TEXT NOT NULL,
        shutdown_requested BOOLEAN NOT NULL DEFAULT FALSE,
        revision BIGINT NOT NULL
     );
     CREATE INDEX agents_by_revision ON agents(revision);
     CREATE TABLE jobs (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        agent_type TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        result TEXT,
        reason TEXT,
        attempts BIGINT NOT NULL DEFAULT 0,
        agent TEXT,
        stop_requested BOOLEAN NOT NULL DEFAULT FALSE,
        log_token_hash TEXT,
        log_token_expires_at BIGINT,
        log_lines BIGINT NOT NULL DEFAULT 0,
        log_bytes BIGINT NOT NULL DEFAULT 0,
        log_trimmed BOOLEAN NOT NULL DEFAULT FALSE,
        queued_at BIGINT NOT NULL,
        assigned_at BIGINT,
        started_at BIGINT,
        finished_at BIGINT,
        secrets_purged BOOLEAN NOT NULL DEFAULT FALSE,
        log_base BIGINT NOT NULL DEFAULT 0,
        revision BIGINT NOT NULL
     );
     CREATE INDEX jobs_by_state ON jobs(state, agent_type, seq);
     CREATE INDEX jobs_by_type ON jobs(agent_type, seq);
     CREATE INDEX jobs_by_revision ON jobs(revision);
     CREATE INDEX jobs_to_purge ON jobs(finished_at) WHERE NOT secrets_purged;
     CREATE TABLE job_logs (
        job_id TEXT NOT NULL,
        line_index BIGINT NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (job_id, line_index)
     );",
];

/// The schema version of the database (0: empty).
pub(super) fn version(connection: &mut Connection) -> StoreResult<i64> {
    block_on(connection.client.batch_execute(
        "CREATE TABLE IF NOT EXISTS hub_schema (version BIGINT NOT NULL);
         INSERT INTO hub_schema SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM hub_schema)",
    ))?;
    let row = block_on(
        connection
            .client
            .query_one("SELECT version FROM hub_schema", &[]),
    )?;
    Ok(row.try_get(0)?)
}

/// Brings the database to the newest schema; refuses one newer than this hub knows.
pub(super) fn migrate(connection: &mut Connection) -> StoreResult<()> {
    connection.in_transaction(Transaction::QUIET, migrate_locked)
}

fn migrate_locked(connection: &mut Connection) -> StoreResult<()> {
    connection.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let version = version(connection)?;
    if version as usize > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {version}, newer than this hub knows ({}); upgrade the hub",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        block_on(connection.client.batch_execute(migration))?;
        let new_version = (index + 1) as i64;
        connection.execute("UPDATE hub_schema SET version = $1", &[&new_version])?;
    }
    Ok(())
}

/// The revision the writing transaction holds: every write runs after its transaction raised
/// `hub_revision` (`PostgresStore::write`, `commit_rows`), and reads the raised value there
/// instead of taking it as a parameter, so that a commit's writes need not wait for the raise's
/// answer: they go in the same round trip.
const HELD_REVISION: &str = "(SELECT value FROM hub_revision WHERE id = 1)";

/// Writes a job's changed columns where its stored revision is still the row's ($15).
pub(super) static WRITE_JOB: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET state = $2, result = $3, reason = $4, attempts = $5, agent = $6,
       stop_requested = $7, log_token_hash = $8, log_token_expires_at = $9, log_trimmed = $10,
       assigned_at = $11, started_at = $12, finished_at = $13, log_base = $14,
       revision = {HELD_REVISION}
     WHERE id = $1 AND revision = $15"
    )
});

/// Writes an agent row where its stored revision is still the row's ($13; 0 for a new
/// registration, which may replace only a row that is not live).
pub(super) static WRITE_AGENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO agents ({AGENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, {HELD_REVISION})
     ON CONFLICT (name) DO UPDATE SET agent_type = excluded.agent_type, token_hash = excluded.token_hash,
       state = excluded.state, job_id = excluded.job_id, jobs_finished = excluded.jobs_finished,
       registered_at = excluded.registered_at,
       last_sync_at = GREATEST(agents.last_sync_at, excluded.last_sync_at),
       interrupted_at = excluded.interrupted_at, disconnected_at = excluded.disconnected_at,
       registration = excluded.registration, shutdown_requested = excluded.shutdown_requested,
       revision = excluded.revision
     WHERE agents.revision = $13 OR ($13 = 0 AND agents.disconnected_at IS NOT NULL)"
    )
});

/// Owned parameter values (a statement's arguments outlive the rows they came from).
pub(super) type Values = Vec<Box<dyn ToSql + Sync + Send>>;

/// [`WRITE_JOB`]'s arguments.
pub(super) fn job_params(job: &JobRow) -> Values {
    vec![
        Box::new(job.id.clone()),
        Box::new(job.state.as_str()),
        Box::new(job.result.map(JobResult::as_str)),
        Box::new(job.reason.clone()),
        Box::new(job.attempts),
        Box::new(job.agent.clone()),
        Box::new(job.stop_requested),
        Box::new(job.log_token_hash.clone()),
        Box::new(job.log_token_expires_at),
        Box::new(job.log_trimmed),
        Box::new(job.assigned_at),
        Box::new(job.started_at),
        Box::new(job.finished_at),
        Box::new(job.log_base),
        Box::new(job.revision),
    ]
}

/// [`WRITE_AGENT`]'s arguments ([`AGENT_COLUMNS`]' order but the revision written, then the
/// revision read).
pub(super) fn agent_params(agent: &AgentRow) -> Values {
    vec![
        Box::new(agent.name.clone()),
        Box::new(agent.agent_type.clone()),
        Box::new(agent.token_hash.clone()),
        Box::new(agent.state.as_str()),
        Box::new(agent.job_id.clone()),
        Box::new(agent.jobs_finished),
        Box::new(agent.registered_at),
        Box::new(agent.last_sync_at),
        Box::new(agent.interrupted_at),
        Box::new(agent.disconnected_at),
        Box::new(agent.registration.clone()),
        Box::new(agent.shutdown_requested),
        Box::new(agent.revision),
    ]
}

/// An instance's columns, in [`INSTANCE_COLUMNS`]' order.
pub(super) fn instance_params(instance: &InstanceRow) -> [&(dyn ToSql + Sync); 6] {
    [
        &instance.instance_id,
        &instance.agent_type,
        &instance.account_id,
        &instance.region,
        &instance.registered_at,
        &instance.launched_at,
    ]
}

/// Borrowed views of owned arguments, as `execute` takes them.
pub(super) fn borrowed(values: &Values) -> Vec<&(dyn ToSql + Sync)> {
    values
        .iter()
        .map(|value| value.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Writes an export's rows into an empty hub's tables as they are, `seq`s included.
pub(super) fn import(
    connection: &mut Connection,
    batch: &ImportBatch,
    revision: i64,
) -> StoreResult<()> {
    for imported in &batch.agent_types {
        let row = &imported.row;
        connection.execute(
            "INSERT INTO agent_types (name, token_hash, created_at, execution_time_limit, revision)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &row.name,
                &row.token_hash,
                &row.created_at,
                &row.time_limit,
                &revision,
            ],
        )?;
        if let Some(policy) = &imported.identity_policy {
            connection.execute(
                "INSERT INTO agent_type_identity (agent_type, policy) VALUES ($1, $2)",
                &[&row.name, policy],
            )?;
        }
    }
    for instance in &batch.instances {
        connection.execute(
            &format!("INSERT INTO registered_instances ({INSTANCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"),
            &instance_params(instance),
        )?;
    }
    for holder in &batch.job_holders {
        connection.execute(
            &format!("INSERT INTO job_holders ({JOB_HOLDER_COLUMNS}) VALUES ($1, $2, $3)"),
            &[&holder.name, &holder.agent_type, &holder.job_id],
        )?;
    }
    for agent in &batch.agents {
        let values = agent_params(&AgentRow {
            revision: 0,
            ..agent.clone()
        });
        connection.execute(&WRITE_AGENT, &borrowed(&values))?;
    }
    for job in &batch.jobs {
        import_job(connection, job, revision)?;
    }
    import_log_lines(connection, &batch.log_lines)?;
    connection.execute(
        "SELECT setval(pg_get_serial_sequence('jobs', 'seq'), GREATEST((SELECT max(seq) FROM jobs), 1))",
        &[],
    )?;
    Ok(())
}

fn import_job(connection: &mut Connection, job: &JobRow, revision: i64) -> StoreResult<()> {
    connection.execute(
        "INSERT INTO jobs (seq, id, agent_type, spec, state, attempts, queued_at, revision, log_lines, log_bytes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &job.seq,
            &job.id,
            &job.agent_type,
            &job.spec,
            &job.state.as_str(),
            &job.attempts,
            &job.queued_at,
            &revision,
            &job.log_lines,
            &job.log_bytes,
        ],
    )?;
    let values = job_params(&JobRow {
        revision,
        ..job.clone()
    });
    connection.execute(&WRITE_JOB, &borrowed(&values))?;
    Ok(())
}

fn import_log_lines(connection: &mut Connection, lines: &[LogLineRow]) -> StoreResult<()> {
    let ids: Vec<&str> = lines.iter().map(|line| line.job_id.as_str()).collect();
    let indices: Vec<i64> = lines.iter().map(|line| line.index).collect();
    let texts: Vec<&str> = lines.iter().map(|line| line.line.as_str()).collect();
    connection.execute(
        "INSERT INTO job_logs (job_id, line_index, line)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])",
        &[&ids, &indices, &texts],
    )?;
    Ok(())
}
