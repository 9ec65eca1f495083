//! A live job's row after each thing that can happen to it — assigned, started, finished, lost,
//! stopped, given a log token — as pure functions from the row in memory to the row to commit.
//! Nothing here changes state: `Hub::commit` writes and applies what these return.

use super::memory::JobMem;
use crate::rules::{self, FinishFacts, JobEvent};
use crate::store::JobRow;
use crate::tokens;
use protocol::{JobResult, JobState};

/// Handed to `agent` (run-job is being sent). Its log goes on after what earlier attempts left.
pub(super) fn assigned(job: &JobRow, agent: &str, now: i64) -> JobRow {
    JobRow {
        state: JobState::Assigned,
        agent: Some(agent.to_string()),
        assigned_at: Some(now),
        attempts: job.attempts + 1,
        log_base: job.log_lines,
        ..job.clone()
    }
}

/// Taken back by the agent it was re-queued from (a lost agent whose link healed before anyone
/// else took the job): the same attempt goes on, so the retry budget is not spent again.
pub(super) fn reclaimed(job: &JobRow, agent: &str, now: i64) -> JobRow {
    JobRow {
        state: JobState::Assigned,
        agent: Some(agent.to_string()),
        assigned_at: Some(now),
        reason: Some("resumed: its agent came back after a lost link".into()),
        ..job.clone()
    }
}

/// Its agent said it started, or its log began.
pub(super) fn started(job: &JobRow, now: i64) -> JobRow {
    JobRow {
        state: JobState::Running,
        started_at: Some(now),
        ..job.clone()
    }
}

/// How the agent that reported a job finished was leaving, if it was.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Leaving<'a> {
    /// It reported an interruption (a signal, a spot notice, a fault).
    pub interrupted: bool,
    /// The hardware fault it reported, e.g. "GPU fault on i-0abc: Xid 79 …".
    pub fault: Option<&'a str>,
}

/// Its agent reported `result`; a job stopped because its agent was interrupted, or ended on a
/// machine that reported a hardware fault, goes back to the queue while its retry policy allows.
pub(super) fn finished(job: &JobMem, result: JobResult, agent: Leaving<'_>, now: i64) -> JobRow {
    let requeue = rules::requeue_after_finish(&FinishFacts {
        result,
        user_stopped: job.row.stop_requested,
        agent_interrupted: agent.interrupted,
        machine_fault: agent.fault.is_some(),
        requeues_done: requeues_done(&job.row),
        requeues_allowed: job.spec.retry.agent_lost,
    });
    match (requeue, agent.fault) {
        (true, Some(fault)) => requeued(&job.row, fault),
        (true, None) => requeued(&job.row, "its agent was interrupted"),
        (false, Some(fault)) => closed(&job.row, result, Some(fault.to_string()), now),
        (false, None) => closed(&job.row, result, None, now),
    }
}

/// Its agent is gone (`why`): re-queued if its retry policy allows, else failed (or stopped, if a
/// stop was asked for). `None` when the job was not with an agent.
pub(super) fn lost(job: &JobMem, now: i64, why: &str) -> Option<JobRow> {
    let row = &job.row;
    if !row.state.is_active() {
        return None;
    }
    if !row.stop_requested && requeues_done(row) < job.spec.retry.agent_lost {
        return Some(requeued(row, why));
    }
    let result = if row.stop_requested {
        JobResult::Stopped
    } else {
        JobResult::Failed
    };
    Some(closed(
        row,
        result,
        Some(format!("{result} because {why}")),
        now,
    ))
}

/// A user asked for a stop: a queued job finishes at once, a running one is stopped by its agent.
pub(super) fn stop_requested(job: &JobRow, now: i64) -> JobRow {
    let state = rules::next_job_state(job.state, JobEvent::RequestStop).unwrap_or(job.state);
    let mut job = JobRow {
        state,
        stop_requested: true,
        ..job.clone()
    };
    if state.is_finished() {
        job.result = Some(JobResult::Stopped);
        job.reason = Some("stopped before it started".into());
        job.finished_at = Some(now);
    }
    job
}

/// With a new log token (only its hash is kept) valid until `expires_at`.
pub(super) fn with_log_token(job: &JobRow, token: &str, expires_at: i64) -> JobRow {
    JobRow {
        log_token_hash: Some(tokens::hash(token)),
        log_token_expires_at: Some(expires_at),
        ..job.clone()
    }
}

fn requeues_done(job: &JobRow) -> u32 {
    u32::try_from(job.attempts - 1).unwrap_or(0)
}

fn requeued(job: &JobRow, why: &str) -> JobRow {
    JobRow {
        state: JobState::Queued,
        agent: None,
        assigned_at: None,
        started_at: None,
        log_token_hash: None,
        log_token_expires_at: None,
        reason: Some(format!("re-queued: {why}")),
        ..job.clone()
    }
}

fn closed(job: &JobRow, result: JobResult, reason: Option<String>, now: i64) -> JobRow {
    JobRow {
        state: JobState::Finished,
        result: Some(result),
        reason: reason.or_else(|| job.reason.clone()),
        finished_at: Some(now),
        log_token_hash: None,
        ..job.clone()
    }
}
