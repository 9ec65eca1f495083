//! Job logs: intake of the agent's pushes (docs/protocol.md §6.3: a log token per job, batches
//! placed by `start_from`, a size cap) and pages of lines for the user API. The lines go straight
//! to the store; memory keeps only each live job's line and byte counts.

use super::memory::Changes;
use super::{jobs, Hub, HubError, HubResult, Inner};
use crate::store::JobRow;
use crate::tokens;
use protocol::views::LogPage;
use protocol::JobState;

impl Hub {
    /// Stores pushed log lines (`start_from` semantics of docs/protocol.md §6.3).
    pub fn push_logs(
        &self,
        job_id: &str,
        bearer: &str,
        start_from: i64,
        body: &str,
        now: i64,
    ) -> HubResult<()> {
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        let Some(job) = core.jobs.get(job_id).map(|job| &job.row) else {
            return Err(HubError::NotFound(format!("job {job_id} is not running")));
        };
        if !log_token_valid(job, bearer, now) {
            return Err(HubError::Unauthorized);
        }
        if job.log_bytes >= self.config.max_log_bytes {
            if !job.log_trimmed {
                let trimmed = JobRow {
                    log_trimmed: true,
                    ..job.clone()
                };
                self.commit(store, core, Changes::job(trimmed), now)?;
            }
            return Err(HubError::LogFull);
        }
        if start_from < 0 || start_from > job.log_lines {
            return Err(HubError::Conflict(format!(
                "start_from {start_from} leaves a gap: the log has {} lines",
                job.log_lines
            )));
        }
        let lines = json_lines(body)?;
        // The first log push is the job starting, even if no sync reported it yet.
        let starts = job.state == JobState::Assigned;
        let (count, bytes) = store.append_log(job_id, start_from, &lines)?;
        if let Some(memory) = core.jobs.get_mut(job_id) {
            memory.row.log_lines = count;
            memory.row.log_bytes = bytes;
            if starts {
                let started = jobs::started(&memory.row, now);
                self.commit(store, core, Changes::job(started), now)?;
            }
        }
        drop(guard);
        self.logs_changed.notify_waiters();
        Ok(())
    }

    /// Log lines of a job from `start_from`, at most `limit`.
    pub fn logs(&self, job_id: &str, start_from: i64, limit: i64) -> HubResult<LogPage> {
        let guard = self.lock();
        let finished = match guard.core.jobs.get(job_id) {
            Some(_) => false,
            None => {
                guard
                    .store
                    .job(job_id)?
                    .ok_or_else(|| HubError::NotFound(format!("no job {job_id}")))?;
                true
            }
        };
        let lines = guard.store.log_lines(job_id, start_from.max(0), limit)?;
        let next_start_from = start_from.max(0) + lines.len() as i64;
        Ok(LogPage {
            lines,
            next_start_from,
            job_finished: finished,
        })
    }
}

/// `bearer` is the job's current, unexpired log token.
fn log_token_valid(job: &JobRow, bearer: &str, now: i64) -> bool {
    job.log_token_hash
        .as_deref()
        .is_some_and(|hash| tokens::constant_time_eq(hash, &tokens::hash(bearer)))
        && job.log_token_expires_at.is_some_and(|at| at > now)
}

/// The non-empty lines of a push body, each of which must be JSON.
fn json_lines(body: &str) -> HubResult<Vec<&str>> {
    let lines: Vec<&str> = body.split('\n').filter(|line| !line.is_empty()).collect();
    match lines
        .iter()
        .position(|line| serde_json::from_str::<serde::de::IgnoredAny>(line).is_err())
    {
        Some(bad) => Err(HubError::BadRequest(format!(
            "line {} of the batch is not JSON",
            bad + 1
        ))),
        None => Ok(lines),
    }
}
