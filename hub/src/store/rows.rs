//! The rows of the hub's tables as both stores read them. Each table's columns are declared once,
//! here, for both backends' `SELECT`s, and every row is mapped from a backend's row by column
//! *name*, so a column added or moved in a query can never shift a value into the wrong field.
//! The backends meet behind [`Columns`]: a SQLite row and a PostgreSQL row give the same typed
//! reads (SQLite's 0/1 and PostgreSQL's `BOOLEAN` both read as `bool`, SQLite's `INTEGER` and
//! PostgreSQL's `BIGINT` as `i64`), and a stored enum that no longer parses is
//! [`StoreError::Corrupt`], named by table and column.

use super::{
    AgentRow, AgentStatus, AgentTypeRow, IdentityPolicyRow, InstanceRow, JobHolderRow, JobRow,
    StoreError, StoreResult,
};
use protocol::{JobResult, JobState};

/// The `jobs` columns a [`JobRow`] is read from.
pub(super) const JOB_COLUMNS: &str = "seq, id, agent_type, spec, state, result, reason, attempts, \
    agent, stop_requested, log_token_hash, log_token_expires_at, log_lines, log_bytes, log_trimmed, \
    queued_at, assigned_at, started_at, finished_at, log_base, revision";

/// The `agents` columns an [`AgentRow`] is read from (and, in this order, written to).
pub(super) const AGENT_COLUMNS: &str = "name, agent_type, token_hash, state, job_id, \
    jobs_finished, registered_at, last_sync_at, interrupted_at, disconnected_at, registration, \
    shutdown_requested, revision";

/// The `agent_types` columns an [`AgentTypeRow`] is read from.
pub(super) const AGENT_TYPE_COLUMNS: &str =
    "name, token_hash, created_at, execution_time_limit, revision";

/// The `registered_instances` columns an [`InstanceRow`] is read from (and, in this order,
/// written to).
pub(super) const INSTANCE_COLUMNS: &str =
    "instance_id, agent_type, account_id, region, registered_at, launched_at";

/// The `job_holders` columns a [`JobHolderRow`] is read from (and, in this order, written to).
pub(super) const JOB_HOLDER_COLUMNS: &str = "name, agent_type, job_id";

/// The `agent_type_identity` columns an [`IdentityPolicyRow`] is read from.
pub(super) const IDENTITY_POLICY_COLUMNS: &str = "agent_type, policy";

/// One row of a query result, read by column name, whichever backend it came from.
pub(super) trait Columns {
    fn text(&self, column: &str) -> StoreResult<String>;
    fn maybe_text(&self, column: &str) -> StoreResult<Option<String>>;
    fn int(&self, column: &str) -> StoreResult<i64>;
    fn maybe_int(&self, column: &str) -> StoreResult<Option<i64>>;
    fn flag(&self, column: &str) -> StoreResult<bool>;
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, column: &str) -> StoreResult<String> {
        Ok(self.get(column)?)
    }
    fn maybe_text(&self, column: &str) -> StoreResult<Option<String>> {
        Ok(self.get(column)?)
    }
    fn int(&self, column: &str) -> StoreResult<i64> {
        Ok(self.get(column)?)
    }
    fn maybe_int(&self, column: &str) -> StoreResult<Option<i64>> {
        Ok(self.get(column)?)
    }
    fn flag(&self, column: &str) -> StoreResult<bool> {
        Ok(self.get(column)?)
    }
}

impl Columns for tokio_postgres::Row {
    fn text(&self, column: &str) -> StoreResult<String> {
        Ok(self.try_get(column)?)
    }
    fn maybe_text(&self, column: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> StoreResult<i64> {
        Ok(self.try_get(column)?)
    }
    fn maybe_int(&self, column: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(column)?)
    }
    fn flag(&self, column: &str) -> StoreResult<bool> {
        Ok(self.try_get(column)?)
    }
}

/// A text column holding one of an enum's wire strings.
fn parsed<T>(
    row: &dyn Columns,
    table: &str,
    column: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> StoreResult<T> {
    let text = row.text(column)?;
    parse(&text).ok_or_else(|| {
        StoreError::Corrupt(format!("{table}.{column} holds unknown value '{text}'"))
    })
}

pub(super) fn job_from(row: &dyn Columns) -> StoreResult<JobRow> {
    let result = match row.maybe_text("result")? {
        Some(_) => Some(parsed(row, "jobs", "result", JobResult::parse)?),
        None => None,
    };
    Ok(JobRow {
        seq: row.int("seq")?,
        id: row.text("id")?,
        agent_type: row.text("agent_type")?,
        spec: row.text("spec")?,
        state: parsed(row, "jobs", "state", |text| text.parse::<JobState>().ok())?,
        result,
        reason: row.maybe_text("reason")?,
        attempts: row.int("attempts")?,
        agent: row.maybe_text("agent")?,
        stop_requested: row.flag("stop_requested")?,
        log_token_hash: row.maybe_text("log_token_hash")?,
        log_token_expires_at: row.maybe_int("log_token_expires_at")?,
        log_lines: row.int("log_lines")?,
        log_bytes: row.int("log_bytes")?,
        log_trimmed: row.flag("log_trimmed")?,
        log_base: row.int("log_base")?,
        queued_at: row.int("queued_at")?,
        assigned_at: row.maybe_int("assigned_at")?,
        started_at: row.maybe_int("started_at")?,
        finished_at: row.maybe_int("finished_at")?,
        revision: row.int("revision")?,
    })
}

pub(super) fn agent_from(row: &dyn Columns) -> StoreResult<AgentRow> {
    Ok(AgentRow {
        name: row.text("name")?,
        agent_type: row.text("agent_type")?,
        token_hash: row.text("token_hash")?,
        state: parsed(row, "agents", "state", AgentStatus::parse)?,
        job_id: row.maybe_text("job_id")?,
        jobs_finished: row.int("jobs_finished")?,
        registered_at: row.int("registered_at")?,
        last_sync_at: row.int("last_sync_at")?,
        interrupted_at: row.int("interrupted_at")?,
        disconnected_at: row.maybe_int("disconnected_at")?,
        registration: row.text("registration")?,
        shutdown_requested: row.flag("shutdown_requested")?,
        revision: row.int("revision")?,
    })
}

pub(super) fn agent_type_from(row: &dyn Columns) -> StoreResult<AgentTypeRow> {
    Ok(AgentTypeRow {
        name: row.text("name")?,
        token_hash: row.text("token_hash")?,
        created_at: row.int("created_at")?,
        time_limit: row.maybe_int("execution_time_limit")?,
        revision: row.int("revision")?,
    })
}

pub(super) fn instance_from(row: &dyn Columns) -> StoreResult<InstanceRow> {
    Ok(InstanceRow {
        instance_id: row.text("instance_id")?,
        agent_type: row.text("agent_type")?,
        account_id: row.text("account_id")?,
        region: row.text("region")?,
        registered_at: row.int("registered_at")?,
        launched_at: row.maybe_int("launched_at")?,
    })
}

pub(super) fn job_holder_from(row: &dyn Columns) -> StoreResult<JobHolderRow> {
    Ok(JobHolderRow {
        name: row.text("name")?,
        agent_type: row.text("agent_type")?,
        job_id: row.text("job_id")?,
    })
}

pub(super) fn identity_policy_from(row: &dyn Columns) -> StoreResult<IdentityPolicyRow> {
    Ok(IdentityPolicyRow {
        agent_type: row.text("agent_type")?,
        policy: row.text("policy")?,
    })
}
