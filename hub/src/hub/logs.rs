//! Job logs: intake of the agent's pushes (docs/protocol.md §6.3: a log token per job, batches
//! placed by `start_from`, a size cap counted before a batch is stored) and pages of lines for the user API. The lines go straight
//! to the store; memory keeps only each live job's line and byte counts.

use super::memory::{Changes, Core};
use super::{jobs, Hub, HubError, HubResult, Invalid};
use crate::store::{JobRow, Store};
use crate::tokens;
use protocol::views::LogPage;
use protocol::JobState;

impl Hub {
    /// Stores pushed log lines (`start_from` semantics of docs/protocol.md §6.3). The size cap
    /// is counted before a batch is stored: the lines that fit are kept and the push gets 422
    /// (the agent then stops pushing and marks its log trimmed, §6.2), so no push overshoots it.
    pub fn push_logs(
        &self,
        job_id: &str,
        bearer: &str,
        start_from: i64,
        body: &str,
        now: i64,
    ) -> HubResult<()> {
        let lines = json_lines(body)?;
        self.locked(now, |store, core| {
            self.push_locked(store, core, job_id, bearer, (start_from, &lines), now)
        })?;
        self.logs_changed.notify_waiters();
        Ok(())
    }

    fn push_locked(
        &self,
        store: &mut dyn Store,
        core: &mut Core,
        job_id: &str,
        bearer: &str,
        (start_from, lines): (i64, &[&str]),
        now: i64,
    ) -> HubResult<()> {
        let Some(job) = core.jobs.get_mut(job_id).map(|job| &mut job.row) else {
            return Err(HubError::JobNotRunning {
                job_id: job_id.to_string(),
            });
        };
        if !log_token_valid(job, bearer, now) {
            return Err(HubError::Unauthorized);
        }
        if store.shared() {
            // Other replicas may have stored this job's earlier batches.
            let counts = store.log_counts(job_id)?;
            (job.log_lines, job.log_bytes) = (counts.lines, counts.bytes);
        }
        if job.log_bytes >= self.config.max_log_bytes {
            return self.log_full(store, core, job_id, now);
        }
        // The agent counts from its own attempt's first line; earlier attempts' lines come first.
        let at = job.log_base.saturating_add(start_from);
        if start_from < 0 || at > job.log_lines {
            return Err(HubError::LogGap {
                start_from,
                lines: job.log_lines - job.log_base,
            });
        }
        // Lines before the log's end are already stored (a retried batch): only the rest counts.
        let stored = usize::try_from(job.log_lines - at).unwrap_or(0);
        let new = &lines[stored.min(lines.len())..];
        let fitting = lines_that_fit(new, self.config.max_log_bytes - job.log_bytes);
        // The first log push is the job starting, even if no sync reported it yet.
        let starts = job.state == JobState::Assigned;
        let counts = store.append_log(job_id, job.log_lines, &new[..fitting])?;
        (job.log_lines, job.log_bytes) = (counts.lines, counts.bytes);
        if starts {
            let started = jobs::started(job, now);
            self.commit(store, core, Changes::job(started), now)?;
        }
        if fitting < new.len() {
            return self.log_full(store, core, job_id, now);
        }
        Ok(())
    }

    /// Marks a job's log trimmed (once) and answers 422.
    fn log_full(
        &self,
        store: &mut dyn Store,
        core: &mut Core,
        job_id: &str,
        now: i64,
    ) -> HubResult<()> {
        if let Some(job) = core.jobs.get(job_id).filter(|job| !job.row.log_trimmed) {
            let trimmed = JobRow {
                log_trimmed: true,
                ..job.row.clone()
            };
            self.commit(store, core, Changes::job(trimmed), now)?;
        }
        self.logs_changed.notify_waiters();
        Err(HubError::LogFull)
    }

    /// Log lines of a job from `start_from`, at most `limit`.
    pub fn logs(&self, job_id: &str, start_from: i64, limit: i64) -> HubResult<LogPage> {
        let guard = self.fresh()?;
        let finished = match guard.core.jobs.get(job_id) {
            Some(_) => false,
            None => {
                guard
                    .store
                    .job(job_id)?
                    .ok_or_else(|| HubError::NoSuchJob {
                        job_id: job_id.to_string(),
                    })?;
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

/// How many of `lines`, from the first, fit in `room` bytes (each stored with its newline).
fn lines_that_fit(lines: &[&str], room: i64) -> usize {
    let mut used: i64 = 0;
    lines
        .iter()
        .take_while(|line| {
            used = used.saturating_add(line.len() as i64 + 1);
            used <= room
        })
        .count()
}

/// `bearer` is the job's current, unexpired log token.
pub(super) fn log_token_valid(job: &JobRow, bearer: &str, now: i64) -> bool {
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
        Some(bad) => Err(Invalid::LogLineNotJson { line: bad + 1 }.into()),
        None => Ok(lines),
    }
}

#[cfg(test)]
mod tests {
    use super::lines_that_fit;

    #[test]
    fn lines_that_fit_count_their_newlines() {
        let lines = ["abc", "de", "f"];
        for (room, expected) in [(0, 0), (3, 0), (4, 1), (6, 1), (7, 2), (9, 3), (100, 3)] {
            assert_eq!(lines_that_fit(&lines, room), expected, "room {room}");
        }
    }
}
