//! The hub's state in PostgreSQL, for teams that run several hub replicas on one replicated
//! database (RDS / Aurora Multi-AZ): the database is the source of truth, and each replica's
//! memory follows it (`store/mod.rs`: revisions, conditional writes, the change feed).
//!
//! How it talks to the server: the hub's core is synchronous (one lock, short critical sections),
//! so this store waits for `tokio-postgres` futures with a plain executor, while the connection
//! itself is driven by a current-thread runtime on a thread of its own (`connection.rs`). That
//! thread also forwards `NOTIFY flotilla_hub` from other replicas as [`Store::change_signal`].
//! A commit's statements are pipelined (sent together, answered together): three round trips
//! whatever the number of rows. A lost connection is made again at the next call.

mod connection;
mod schema;

use super::rows::{
    agent_from, agent_type_from, identity_policy_from, instance_from, job_from, job_holder_from,
    Columns, AGENT_COLUMNS, AGENT_TYPE_COLUMNS, IDENTITY_POLICY_COLUMNS, INSTANCE_COLUMNS,
    JOB_COLUMNS, JOB_HOLDER_COLUMNS,
};
use super::{
    AgentRow, AgentStatus, AgentTouch, AgentTypeRow, Feed, IdentityPolicyRow, ImportBatch,
    Inserted, InstanceRow, JobHolderRow, JobQuery, JobRow, LogCounts, NameRecord, Store,
    StoreError, StoreResult,
};
use connection::{Begun, Connection, Transaction};
use futures_executor::block_on;
use futures_util::future::try_join_all;
use protocol::JobState;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

/// Another replica counts as writing this long after its last announced commit.
const OTHERS_WRITING_SECS: i64 = 30;

/// The session advisory lock the leading replica holds ("flotilla" in ASCII).
const LEADER_LOCK: i64 = 0x666c_6f74_696c_6c61;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(crate) struct PostgresStore {
    url: String,
    ca_file: Option<PathBuf>,
    connection: RefCell<Connection>,
    /// Raised when another process commits; survives reconnections.
    signal: Arc<tokio::sync::Notify>,
    /// When (Unix seconds) another process last announced a commit.
    heard_at: Arc<AtomicI64>,
    leader: bool,
}

impl PostgresStore {
    /// Connects, migrates (once, whichever replica comes first) and listens for other replicas'
    /// commits.
    pub(crate) fn connect(url: &str, ca_file: Option<&Path>) -> StoreResult<PostgresStore> {
        let signal = Arc::new(tokio::sync::Notify::new());
        let heard_at = Arc::new(AtomicI64::new(0));
        let connection = Connection::open(url, ca_file, (signal.clone(), heard_at.clone()))?;
        let mut store = PostgresStore {
            url: url.to_string(),
            ca_file: ca_file.map(Path::to_path_buf),
            connection: RefCell::new(connection),
            signal,
            heard_at,
            leader: false,
        };
        schema::migrate(store.connection.get_mut())?;
        Ok(store)
    }

    /// The connection, made again first if the server closed the old one (a failover).
    fn connection(&self) -> StoreResult<std::cell::RefMut<'_, Connection>> {
        let mut connection = self.connection.borrow_mut();
        if connection.client.is_closed() {
            tracing::warn!("the PostgreSQL connection closed; connecting again");
            let listener = (self.signal.clone(), self.heard_at.clone());
            *connection = Connection::open(&self.url, self.ca_file.as_deref(), listener)?;
        }
        Ok(connection)
    }

    fn rows(&self, sql: &str, params: Params) -> StoreResult<Vec<Row>> {
        rows_on(&mut *self.connection()?, sql, params)
    }

    fn execute(&self, sql: &str, params: Params) -> StoreResult<u64> {
        let mut connection = self.connection()?;
        let statement = connection.statement(sql)?;
        Ok(block_on(connection.client.execute(&statement, params))?)
    }

    fn mapped<T>(
        &self,
        sql: &str,
        params: Params,
        map: fn(&dyn Columns) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        mapped_on(&mut *self.connection()?, sql, params, map)
    }

    /// Runs `work` in one transaction that holds the next revision (which also queues other
    /// writers behind this one until it commits) and tells the other replicas on commit.
    fn write<T>(
        &mut self,
        work: impl FnOnce(&mut Connection, i64) -> StoreResult<T>,
    ) -> StoreResult<(T, i64)> {
        self.connection()?
            .in_transaction(Transaction::ANNOUNCED, |connection| {
                let revision = next_revision(connection)?;
                Ok((work(connection, revision)?, revision))
            })
    }
}

/// The rows `sql` selects on `connection`.
fn rows_on(connection: &mut Connection, sql: &str, params: Params) -> StoreResult<Vec<Row>> {
    let statement = connection.statement(sql)?;
    Ok(block_on(connection.client.query(&statement, params))?)
}

/// The rows `sql` selects on `connection`, each read by `map` (by column name, `store/rows.rs`).
fn mapped_on<T>(
    connection: &mut Connection,
    sql: &str,
    params: Params,
    map: fn(&dyn Columns) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    rows_on(connection, sql, params)?
        .iter()
        .map(|row| map(row))
        .collect()
}

/// The newest committed revision, read on `connection`.
fn head_on(connection: &mut Connection) -> StoreResult<i64> {
    let rows = rows_on(
        connection,
        "SELECT value FROM hub_revision WHERE id = 1",
        &[],
    )?;
    let row = rows.first().ok_or_else(|| corrupt("revision", "none"))?;
    row.int("value")
}

/// Raises the revision; the transaction holds it (and queues other writers) until it ends.
const RAISE_REVISION: &str =
    "UPDATE hub_revision SET value = value + 1 WHERE id = 1 RETURNING value";

fn next_revision(connection: &mut Connection) -> StoreResult<i64> {
    let statement = connection.statement(RAISE_REVISION)?;
    let row = block_on(connection.client.query_one(&statement, &[]))?;
    Ok(row.try_get(0)?)
}

fn corrupt(what: &str, text: &str) -> StoreError {
    StoreError::Corrupt(format!("unknown {what} '{text}'"))
}

/// What a name has been (`Store::name_record`); rank 0: a job holder.
const NAME_RECORD: &str = "SELECT agent_type, rank FROM (
       SELECT agent_type, 0::bigint AS rank FROM job_holders WHERE name = $1
       UNION ALL SELECT agent_type, 1::bigint AS rank FROM agents WHERE name = $1
     ) AS owners ORDER BY rank LIMIT 1";

const INSERT_TYPE: &str =
    "INSERT INTO agent_types (name, token_hash, created_at, revision) VALUES ($1, $2, $3, $4)
     ON CONFLICT DO NOTHING";

impl Store for PostgresStore {
    fn schema_version(&self) -> StoreResult<i64> {
        schema::version(&mut *self.connection()?)
    }

    fn shared(&self) -> bool {
        true
    }

    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.signal.clone())
    }

    fn others_writing(&self, now: i64) -> bool {
        now - self.heard_at.load(Ordering::Relaxed) <= OTHERS_WRITING_SECS
    }

    fn try_lead(&mut self) -> StoreResult<bool> {
        let replaced = self.connection.get_mut().client.is_closed();
        if self.leader && !replaced {
            return Ok(true);
        }
        let rows = self.rows("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])?;
        self.leader = rows.first().map(|row| row.try_get(0)).transpose()? == Some(true);
        Ok(self.leader)
    }

    fn head_revision(&self) -> StoreResult<i64> {
        head_on(&mut *self.connection()?)
    }

    fn changes_since(&self, revision: i64) -> StoreResult<Feed> {
        // One snapshot: every row at or below the head it reads is in it (see store/mod.rs).
        self.connection()?
            .in_transaction(Transaction::SNAPSHOT, |connection| {
                Ok(Feed {
                    revision: head_on(connection)?,
                    agent_types: mapped_on(
                        connection,
                        &format!(
                            "SELECT {AGENT_TYPE_COLUMNS} FROM agent_types WHERE revision > $1"
                        ),
                        &[&revision],
                        agent_type_from,
                    )?,
                    jobs: mapped_on(
                        connection,
                        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE revision > $1 ORDER BY seq"),
                        &[&revision],
                        job_from,
                    )?,
                    agents: mapped_on(
                        connection,
                        &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE revision > $1"),
                        &[&revision],
                        agent_from,
                    )?,
                })
            })
    }

    fn insert_agent_type(&mut self, name: &str, token_hash: &str, now: i64) -> StoreResult<bool> {
        let (inserted, _) = self.write(|connection, revision| {
            connection.execute(INSERT_TYPE, &[&name, &token_hash, &now, &revision])
        })?;
        Ok(inserted == 1)
    }

    fn insert_agent_type_with_identity(
        &mut self,
        name: &str,
        token_hash: &str,
        now: i64,
        identity_policy: &str,
    ) -> StoreResult<bool> {
        let (inserted, _) = self.write(|connection, revision| {
            let inserted =
                connection.execute(INSERT_TYPE, &[&name, &token_hash, &now, &revision])? == 1;
            if inserted {
                connection.execute(
                    "INSERT INTO agent_type_identity (agent_type, policy) VALUES ($1, $2)",
                    &[&name, &identity_policy],
                )?;
            }
            Ok(inserted)
        })?;
        Ok(inserted)
    }

    fn agent_types(&self) -> StoreResult<Vec<AgentTypeRow>> {
        let sql = format!("SELECT {AGENT_TYPE_COLUMNS} FROM agent_types ORDER BY name");
        self.mapped(&sql, &[], agent_type_from)
    }

    fn identity_policies(&self) -> StoreResult<Vec<IdentityPolicyRow>> {
        let sql = format!(
            "SELECT {IDENTITY_POLICY_COLUMNS} FROM agent_type_identity ORDER BY agent_type"
        );
        self.mapped(&sql, &[], identity_policy_from)
    }

    fn identity_policy(&self, agent_type: &str) -> StoreResult<Option<String>> {
        let sql = format!(
            "SELECT {IDENTITY_POLICY_COLUMNS} FROM agent_type_identity WHERE agent_type = $1"
        );
        Ok(self
            .mapped(&sql, &[&agent_type], identity_policy_from)?
            .pop()
            .map(|row| row.policy))
    }

    fn set_identity_policy(&mut self, agent_type: &str, policy: Option<&str>) -> StoreResult<()> {
        match policy {
            Some(policy) => self.execute(
                "INSERT INTO agent_type_identity (agent_type, policy) VALUES ($1, $2)
                 ON CONFLICT (agent_type) DO UPDATE SET policy = excluded.policy",
                &[&agent_type, &policy],
            )?,
            None => self.execute(
                "DELETE FROM agent_type_identity WHERE agent_type = $1",
                &[&agent_type],
            )?,
        };
        Ok(())
    }

    fn set_agent_type_time_limit(&mut self, name: &str, seconds: Option<i64>) -> StoreResult<()> {
        self.write(|connection, revision| {
            connection.execute(
                "UPDATE agent_types SET execution_time_limit = $2, revision = $3 WHERE name = $1",
                &[&name, &seconds, &revision],
            )
        })?;
        Ok(())
    }

    fn record_instance(&mut self, instance: &InstanceRow) -> StoreResult<bool> {
        let inserted = self.execute(
            &format!(
                "INSERT INTO registered_instances ({INSTANCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT DO NOTHING"
            ),
            &schema::instance_params(instance),
        )?;
        Ok(inserted == 1)
    }

    fn instance_launched_at(&self, instance_id: &str) -> StoreResult<Option<i64>> {
        let rows = self.rows(
            "SELECT launched_at FROM registered_instances WHERE instance_id = $1",
            &[&instance_id],
        )?;
        Ok(match rows.first() {
            Some(row) => row.maybe_int("launched_at")?,
            None => None,
        })
    }

    fn instance_registered(&self, instance_id: &str) -> StoreResult<bool> {
        let sql = "SELECT 1 FROM registered_instances WHERE instance_id = $1";
        Ok(!self.rows(sql, &[&instance_id])?.is_empty())
    }

    fn name_record(&self, name: &str) -> StoreResult<NameRecord> {
        let rows = self.rows(NAME_RECORD, &[&name])?;
        let Some(first) = rows.first() else {
            return Ok(NameRecord::default());
        };
        Ok(NameRecord {
            owner: Some(first.text("agent_type")?),
            held_a_job: first.int("rank")? == 0,
        })
    }

    fn agent(&self, name: &str) -> StoreResult<Option<AgentRow>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE name = $1");
        Ok(self.mapped(&sql, &[&name], agent_from)?.pop())
    }

    fn agents(&self, include_disconnected: bool) -> StoreResult<Vec<AgentRow>> {
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE $1 OR disconnected_at IS NULL ORDER BY name"
        );
        self.mapped(&sql, &[&include_disconnected], agent_from)
    }

    fn live_agents(&self, lost_since: i64) -> StoreResult<Vec<AgentRow>> {
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents
             WHERE disconnected_at IS NULL OR (state = $1 AND last_sync_at >= $2) ORDER BY name"
        );
        self.mapped(
            &sql,
            &[&AgentStatus::Lost.as_str(), &lost_since],
            agent_from,
        )
    }

    fn prune_agents(&mut self, left_before: i64) -> StoreResult<usize> {
        let pruned = self.execute(
            "DELETE FROM agents WHERE name IN (SELECT name FROM agents
               WHERE disconnected_at < $1 AND last_sync_at < $1 LIMIT $2)",
            &[&left_before, &super::PRUNE_BATCH],
        )?;
        Ok(usize::try_from(pruned).unwrap_or(usize::MAX))
    }

    fn touch_agents(&mut self, updates: &[AgentTouch]) -> StoreResult<()> {
        let names: Vec<&str> = updates.iter().map(|touch| touch.name.as_str()).collect();
        let times: Vec<i64> = updates.iter().map(|touch| touch.last_sync_at).collect();
        let states: Vec<&str> = updates.iter().map(|touch| touch.state.as_str()).collect();
        let interrupted: Vec<i64> = updates.iter().map(|touch| touch.interrupted_at).collect();
        self.execute(
            "UPDATE agents SET last_sync_at = GREATEST(agents.last_sync_at, u.at), state = u.state,
               interrupted_at = GREATEST(agents.interrupted_at, u.interrupted)
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) AS u(name, at, state, interrupted)
             WHERE agents.name = u.name AND agents.disconnected_at IS NULL",
            &[&names, &times, &states, &interrupted],
        )?;
        Ok(())
    }

    fn insert_job(&mut self, job: &JobRow) -> StoreResult<Inserted> {
        let (seq, revision) = self.write(|connection, revision| {
            let statement = connection.statement(
                "INSERT INTO jobs (id, agent_type, spec, state, attempts, queued_at, revision)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
            )?;
            let params: Params = &[
                &job.id,
                &job.agent_type,
                &job.spec,
                &job.state.as_str(),
                &job.attempts,
                &job.queued_at,
                &revision,
            ];
            let row = block_on(connection.client.query_one(&statement, params))?;
            row.int("seq")
        })?;
        Ok(Inserted { seq, revision })
    }

    fn commit(&mut self, jobs: &[&JobRow], agents: &[&AgentRow]) -> StoreResult<i64> {
        let mut connection = self.connection()?;
        let statements = CommitStatements::prepare(&mut connection)?;
        connection.in_pipelined_transaction(Transaction::ANNOUNCED, |client, begun| {
            let committed = write_rows(client, begun, &statements, jobs, agents)?;
            if committed.written.iter().any(|&count| count != 1) {
                return Err(StoreError::Conflict);
            }
            Ok(committed.revision)
        })
    }

    fn job(&self, id: &str) -> StoreResult<Option<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        Ok(self.mapped(&sql, &[&id], job_from)?.pop())
    }

    fn unfinished_jobs(&self) -> StoreResult<Vec<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state != $1 ORDER BY seq");
        self.mapped(&sql, &[&JobState::Finished.as_str()], job_from)
    }

    fn list_jobs(&self, state: Option<JobState>, limit: u32) -> StoreResult<Vec<JobRow>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR state = $1) ORDER BY seq DESC LIMIT $2"
        );
        let state = state.map(JobState::as_str);
        self.mapped(&sql, &[&state, &i64::from(limit)], job_from)
    }

    fn query_jobs(&self, query: &JobQuery) -> StoreResult<(Vec<JobRow>, bool)> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR agent_type = $2)
               AND ($3::text IS NULL OR strpos(lower(spec::jsonb ->> 'name'), lower($3)) > 0)
               AND ($4::bigint IS NULL OR seq < $4)
             ORDER BY seq DESC LIMIT $5"
        );
        let state = query.state.map(JobState::as_str);
        let fetch = query.fetch();
        let params: Params = &[
            &state,
            &query.agent_type,
            &query.name,
            &query.before,
            &fetch,
        ];
        Ok(query.page(self.mapped(&sql, params, job_from)?))
    }

    fn purge_job_secrets(
        &mut self,
        finished_before: i64,
        redact: &dyn Fn(&str) -> String,
    ) -> StoreResult<usize> {
        // One transaction, the due rows locked: two replicas' sweeps purge each job once.
        self.connection()?
            .in_transaction(Transaction::QUIET, |connection| {
                let due = rows_on(
                    connection,
                    "SELECT id, spec FROM jobs WHERE NOT secrets_purged AND finished_at < $1
                     FOR UPDATE",
                    &[&finished_before],
                )?;
                let mut ids = Vec::with_capacity(due.len());
                let mut specs = Vec::with_capacity(due.len());
                for row in &due {
                    ids.push(row.text("id")?);
                    specs.push(redact(&row.text("spec")?));
                }
                connection.execute(
                    "UPDATE jobs SET spec = u.spec, secrets_purged = TRUE
                     FROM unnest($1::text[], $2::text[]) AS u(id, spec) WHERE jobs.id = u.id",
                    &[&ids, &specs],
                )?;
                Ok(due.len())
            })
    }

    fn append_log(
        &mut self,
        job_id: &str,
        start_from: i64,
        lines: &[&str],
    ) -> StoreResult<LogCounts> {
        self.connection()?
            .in_transaction(Transaction::QUIET, |connection| {
                append_in_transaction(connection, job_id, start_from, lines)
            })
    }

    fn log_counts(&self, job_id: &str) -> StoreResult<LogCounts> {
        let rows = self.rows(
            "SELECT log_lines, log_bytes FROM jobs WHERE id = $1",
            &[&job_id],
        )?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Corrupt(format!("no job {job_id}")))?;
        log_counts_from(row)
    }

    fn log_lines(&self, job_id: &str, start_from: i64, limit: i64) -> StoreResult<Vec<String>> {
        let rows = self.rows(
            "SELECT line FROM job_logs WHERE job_id = $1 AND line_index >= $2 ORDER BY line_index LIMIT $3",
            &[&job_id, &start_from, &limit],
        )?;
        rows.iter().map(|row| row.text("line")).collect()
    }

    fn instances(&self) -> StoreResult<Vec<InstanceRow>> {
        let sql =
            format!("SELECT {INSTANCE_COLUMNS} FROM registered_instances ORDER BY instance_id");
        self.mapped(&sql, &[], instance_from)
    }

    fn job_holders(&self) -> StoreResult<Vec<JobHolderRow>> {
        let sql = format!("SELECT {JOB_HOLDER_COLUMNS} FROM job_holders ORDER BY name");
        self.mapped(&sql, &[], job_holder_from)
    }

    fn jobs_after(&self, after: i64, limit: u32) -> StoreResult<Vec<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE seq > $1 ORDER BY seq LIMIT $2");
        self.mapped(&sql, &[&after, &i64::from(limit)], job_from)
    }

    fn import(&mut self, batch: &ImportBatch) -> StoreResult<()> {
        self.write(|connection, revision| schema::import(connection, batch, revision))?;
        Ok(())
    }
}

/// The statements of a commit, prepared on its connection (once: `Connection::statement`).
struct CommitStatements {
    raise: Statement,
    write_job: Statement,
    write_agent: Statement,
    holder: Statement,
}

impl CommitStatements {
    fn prepare(connection: &mut Connection) -> StoreResult<CommitStatements> {
        Ok(CommitStatements {
            raise: connection.statement(RAISE_REVISION)?,
            write_job: connection.statement(&schema::WRITE_JOB)?,
            write_agent: connection.statement(&schema::WRITE_AGENT)?,
            holder: connection.statement(&format!(
                "INSERT INTO job_holders ({JOB_HOLDER_COLUMNS}) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            ))?,
        })
    }
}

/// What a commit's writes answered: the revision they wrote and how many rows each wrote.
struct Committed {
    revision: i64,
    written: Vec<u64>,
}

/// The job and agent writes of one commit, sent in one round trip with the transaction's BEGIN
/// and the raise of the revision (which the writes read: `schema::WRITE_JOB`); the COMMIT is
/// the second and last. Requests on one connection run in the order they are sent, and
/// `try_join` polls (sends) its futures in the order given.
fn write_rows(
    client: &Client,
    begun: Begun<'_>,
    statements: &CommitStatements,
    jobs: &[&JobRow],
    agents: &[&AgentRow],
) -> StoreResult<Committed> {
    let job_values: Vec<_> = jobs.iter().map(|job| schema::job_params(job)).collect();
    let agent_values: Vec<_> = agents
        .iter()
        .map(|agent| schema::agent_params(agent))
        .collect();
    let job_args: Vec<_> = job_values.iter().map(schema::borrowed).collect();
    let agent_args: Vec<_> = agent_values.iter().map(schema::borrowed).collect();
    // The agent a job is assigned to has held a job, for good (same transaction).
    let holders: Vec<[&(dyn ToSql + Sync); 3]> = jobs
        .iter()
        .filter_map(|job| match (job.state, &job.agent) {
            (JobState::Assigned, Some(agent)) => {
                Some([agent as &(dyn ToSql + Sync), &job.agent_type, &job.id])
            }
            _ => None,
        })
        .collect();
    let mut writes: Vec<_> = job_args
        .iter()
        .map(|args| client.execute(&statements.write_job, args))
        .collect();
    writes.extend(
        agent_args
            .iter()
            .map(|args| client.execute(&statements.write_agent, args)),
    );
    let counts = writes.len();
    writes.extend(
        holders
            .iter()
            .map(|args| client.execute(&statements.holder, args)),
    );
    let raise = client.query_one(&statements.raise, &[]);
    let (_, raised, mut written) = block_on(futures_util::future::try_join3(
        begun,
        raise,
        try_join_all(writes),
    ))?;
    written.truncate(counts);
    Ok(Committed {
        revision: raised.try_get(0)?,
        written,
    })
}

/// Stores lines at `start_from..` with the job's row locked, so two replicas appending the
/// same batch (an agent's retry through another replica) store it once.
fn append_in_transaction(
    connection: &mut Connection,
    job_id: &str,
    start_from: i64,
    lines: &[&str],
) -> StoreResult<LogCounts> {
    let counts =
        connection.statement("SELECT log_lines, log_bytes FROM jobs WHERE id = $1 FOR UPDATE")?;
    let row = block_on(connection.client.query_one(&counts, &[&job_id]))?;
    let new = super::new_log_lines(start_from, log_counts_from(&row)?, lines);
    let (indices, texts): (Vec<i64>, Vec<&str>) = new.lines.into_iter().unzip();
    let insert = connection.statement(
        "INSERT INTO job_logs (job_id, line_index, line)
         SELECT $1, u.i, u.line FROM unnest($2::bigint[], $3::text[]) AS u(i, line)
         ON CONFLICT DO NOTHING",
    )?;
    let update =
        connection.statement("UPDATE jobs SET log_lines = $2, log_bytes = $3 WHERE id = $1")?;
    let client = &connection.client;
    block_on(futures_util::future::try_join(
        client.execute(&insert, &[&job_id, &indices, &texts]),
        client.execute(&update, &[&job_id, &new.counts.lines, &new.counts.bytes]),
    ))?;
    Ok(new.counts)
}

/// A job's log counts from a row holding `log_lines` and `log_bytes`.
fn log_counts_from(row: &Row) -> StoreResult<LogCounts> {
    Ok(LogCounts {
        lines: row.int("log_lines")?,
        bytes: row.int("log_bytes")?,
    })
}
