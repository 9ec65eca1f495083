//! Moving a hub from one store to another (`scaler hub export` / `scaler hub import`), e.g. from
//! the single-machine SQLite file to PostgreSQL when a team outgrows one machine: every agent type
//! (token hashes and identity rules), registered instance, name that held a job, agent, job and
//! log line, as JSON lines. The stream opens with a header and closes with counts, so a cut-off
//! file is refused rather than half-imported; the target must be empty. Jobs keep their `seq`
//! (list order), tokens stay hashes (agents and users keep theirs).

use crate::store::{
    AgentRow, AgentTypeImport, AgentTypeRow, ImportBatch, InstanceRow, JobHolderRow, JobRow,
    LogLineRow, Store, StoreError,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use thiserror::Error;

/// The export format's version. Format 2 writes an instance's row as an object (format 1 wrote a
/// list of its fields in their order); both read.
const FORMAT: u32 = 2;
/// Jobs (with their logs) read or written per batch.
const JOBS_PER_BATCH: u32 = 200;
/// Log lines written per transaction on import.
const LINES_PER_BATCH: usize = 20_000;

#[derive(Debug, Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
    #[error("cannot read the export: {0}")]
    Read(std::io::Error),
    #[error("line {line} of the export: {why}")]
    Format { line: usize, why: String },
    #[error("the target hub is not empty ({0}); import into a new database")]
    NotEmpty(String),
    #[error("the export is incomplete: {0}")]
    Incomplete(String),
}

/// How much moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub agent_types: u64,
    pub agents: u64,
    pub jobs: u64,
    pub log_lines: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    Header {
        format: u32,
    },
    AgentType {
        row: AgentTypeRow,
        identity_policy: Option<String>,
    },
    Instance {
        row: InstanceRow,
    },
    JobHolder {
        name: String,
        agent_type: String,
        job_id: String,
    },
    Agent {
        row: AgentRow,
    },
    Job {
        row: JobRow,
    },
    LogLine {
        job_id: String,
        index: i64,
        line: String,
    },
    End {
        counts: Counts,
    },
}

fn emit(out: &mut dyn Write, record: &Record) -> Result<(), TransferError> {
    let line = serde_json::to_string(record).map_err(|e| TransferError::Write(e.into()))?;
    writeln!(out, "{line}").map_err(TransferError::Write)
}

/// Writes everything in `store` to `out`.
pub fn export(store: &dyn Store, out: &mut dyn Write) -> Result<Counts, TransferError> {
    let mut counts = Counts::default();
    emit(out, &Record::Header { format: FORMAT })?;
    let mut policies: HashMap<String, String> = store
        .identity_policies()?
        .into_iter()
        .map(|row| (row.agent_type, row.policy))
        .collect();
    for row in store.agent_types()? {
        let identity_policy = policies.remove(&row.name);
        counts.agent_types += 1;
        emit(
            out,
            &Record::AgentType {
                row,
                identity_policy,
            },
        )?;
    }
    for row in store.instances()? {
        emit(out, &Record::Instance { row })?;
    }
    for holder in store.job_holders()? {
        emit(
            out,
            &Record::JobHolder {
                name: holder.name,
                agent_type: holder.agent_type,
                job_id: holder.job_id,
            },
        )?;
    }
    for row in store.agents(true)? {
        counts.agents += 1;
        emit(out, &Record::Agent { row })?;
    }
    export_jobs(store, out, &mut counts)?;
    emit(out, &Record::End { counts })?;
    out.flush().map_err(TransferError::Write)?;
    Ok(counts)
}

fn export_jobs(
    store: &dyn Store,
    out: &mut dyn Write,
    counts: &mut Counts,
) -> Result<(), TransferError> {
    let mut after = 0;
    loop {
        let jobs = store.jobs_after(after, JOBS_PER_BATCH)?;
        let Some(last) = jobs.last() else {
            return Ok(());
        };
        after = last.seq;
        for row in jobs {
            let job_id = row.id.clone();
            counts.jobs += 1;
            emit(out, &Record::Job { row })?;
            let mut index = 0;
            loop {
                let lines = store.log_lines(&job_id, index, LINES_PER_BATCH as i64)?;
                if lines.is_empty() {
                    break;
                }
                for line in lines {
                    counts.log_lines += 1;
                    let job_id = job_id.clone();
                    emit(
                        out,
                        &Record::LogLine {
                            job_id,
                            index,
                            line,
                        },
                    )?;
                    index += 1;
                }
            }
        }
    }
}

/// Reads an export into `store`, which must be empty. Returns what moved.
pub fn import(store: &mut dyn Store, input: &mut dyn BufRead) -> Result<Counts, TransferError> {
    if !store.agent_types()?.is_empty() || !store.jobs_after(0, 1)?.is_empty() {
        return Err(TransferError::NotEmpty("it has agent types or jobs".into()));
    }
    let mut batch = ImportBatch::default();
    let mut seen = Counts::default();
    let mut header = false;
    for (number, line) in input.lines().enumerate() {
        let line = line.map_err(TransferError::Read)?;
        let format_error = |why: String| TransferError::Format {
            line: number + 1,
            why,
        };
        let record: Record =
            serde_json::from_str(&line).map_err(|error| format_error(error.to_string()))?;
        match record {
            Record::Header { format } if (1..=FORMAT).contains(&format) && !header => header = true,
            Record::Header { format } => {
                return Err(format_error(format!("a second header, or format {format}")))
            }
            _ if !header => return Err(format_error("no header: not a hub export".into())),
            Record::End { counts } if counts == seen => {
                store.import(&batch)?;
                return Ok(seen);
            }
            Record::End { counts } => {
                return Err(TransferError::Incomplete(format!(
                    "it announces {counts:?} but holds {seen:?}"
                )))
            }
            record => add(&mut batch, &mut seen, record),
        }
        if batch.jobs.len() >= JOBS_PER_BATCH as usize || batch.log_lines.len() >= LINES_PER_BATCH {
            store.import(&std::mem::take(&mut batch))?;
        }
    }
    Err(TransferError::Incomplete(
        "it ends before its closing counts (cut off?); the target holds part of it: \
         empty it before importing again"
            .into(),
    ))
}

fn add(batch: &mut ImportBatch, seen: &mut Counts, record: Record) {
    match record {
        Record::AgentType {
            row,
            identity_policy,
        } => {
            seen.agent_types += 1;
            batch.agent_types.push(AgentTypeImport {
                row,
                identity_policy,
            });
        }
        Record::Instance { row } => batch.instances.push(row),
        Record::JobHolder {
            name,
            agent_type,
            job_id,
        } => batch.job_holders.push(JobHolderRow {
            name,
            agent_type,
            job_id,
        }),
        Record::Agent { row } => {
            seen.agents += 1;
            batch.agents.push(row);
        }
        Record::Job { row } => {
            seen.jobs += 1;
            batch.jobs.push(row);
        }
        Record::LogLine {
            job_id,
            index,
            line,
        } => {
            seen.log_lines += 1;
            batch.log_lines.push(LogLineRow {
                job_id,
                index,
                line,
            });
        }
        Record::Header { .. } | Record::End { .. } => {}
    }
}
