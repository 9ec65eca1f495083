//! Job time limits. Every job an agent holds has one: its spec's `execution_time_limit`, else its
//! agent type's default, else the hub's (`--job-time-limit`, 60 min). It counts from the moment
//! the job started (or, before that, was handed to an agent): a job that only waits in the queue
//! is not timed. Past it the hub asks for the job to be stopped, so its agent gets `stop-job` at
//! its next sync; the job ends `stopped` with the reason on the job and as the last line of its
//! log. Whether a job is over its limit is a pure function of its row, its limit and the time.

use super::memory::{Changes, Core, JobMem};
use super::{jobs, Hub, HubConfig, HubError, HubResult, Inner, Invalid};
use crate::store::{JobRow, Store};
use protocol::spec::human_duration;
use protocol::{JobState, LogEvent};

impl Hub {
    /// Sets an agent type's default job time limit (`None`: the hub's default).
    pub fn set_agent_type_time_limit(&self, name: &str, seconds: Option<u64>) -> HubResult<()> {
        let seconds = match seconds {
            Some(0) => return Err(Invalid::ZeroTimeLimit.into()),
            Some(seconds) => Some(i64::try_from(seconds).unwrap_or(i64::MAX)),
            None => None,
        };
        let mut guard = self.fresh()?;
        let Inner { store, core } = &mut *guard;
        if !core.types.contains_key(name) {
            return Err(HubError::NoSuchAgentType {
                name: name.to_string(),
            });
        }
        store.set_agent_type_time_limit(name, seconds)?;
        match seconds {
            Some(seconds) => core.type_time_limits.insert(name.to_string(), seconds),
            None => core.type_time_limits.remove(name),
        };
        Ok(())
    }

    /// Asks for every job past its time limit to be stopped (its agent gets `stop-job` at its
    /// next sync). Returns how many were.
    pub(super) fn enforce_time_limits(
        &self,
        store: &mut dyn Store,
        core: &mut Core,
        now: i64,
    ) -> HubResult<usize> {
        let due: Vec<JobRow> = core
            .jobs
            .values()
            .filter_map(|job| {
                let limit = time_limit(job, core, &self.config);
                let reason = over_time_limit(&job.row, limit, now)?;
                tracing::warn!(job = %job.row.id, agent = ?job.row.agent, "{reason}: stopping the job");
                Some(JobRow {
                    reason: Some(reason),
                    ..jobs::stop_requested(&job.row, now)
                })
            })
            .collect();
        let count = due.len();
        let changes = Changes {
            jobs: due,
            agents: Vec::new(),
        };
        self.commit(store, core, changes, now)?;
        Ok(count)
    }
}

/// The time limit of a job, in seconds: its spec's, its agent type's or the hub's.
fn time_limit(job: &JobMem, core: &Core, config: &HubConfig) -> i64 {
    job.spec
        .execution_time_limit
        .map(|limit| i64::try_from(limit.seconds()).unwrap_or(i64::MAX))
        .or_else(|| core.type_time_limits.get(&job.row.agent_type).copied())
        .unwrap_or(config.default_time_limit_secs)
}

/// How the reason of a job the hub stopped for its time limit begins.
const OVER_TIME_LIMIT: &str = "execution time limit of";

/// Why a job an agent holds must be stopped now, or `None` while it may run on (or is already
/// being stopped, or only waits in the queue).
pub(super) fn over_time_limit(row: &JobRow, limit_secs: i64, now: i64) -> Option<String> {
    let held = matches!(row.state, JobState::Assigned | JobState::Running);
    if !held || row.stop_requested {
        return None;
    }
    let since = row.started_at.or(row.assigned_at)?;
    (now.saturating_sub(since) > limit_secs).then(|| {
        let limit = human_duration(u64::try_from(limit_secs).unwrap_or(0));
        format!("{OVER_TIME_LIMIT} {limit} exceeded")
    })
}

/// The log line that tells the user why the hub stopped a job (a `cmd_output` event, so every
/// log reader shows it).
fn stop_note(reason: &str, now: i64) -> String {
    let event = LogEvent::CmdOutput {
        timestamp: now,
        output: format!("\nFlotilla: {reason}: the hub stopped the job\n"),
    };
    let mut line = Vec::new();
    event.write_line(&mut line);
    String::from_utf8_lossy(&line).trim_end().to_string()
}

/// Ends the log of each finished job the hub stopped itself with the note saying why. The
/// agent's log is complete by then (it flushes before it reports the job finished). The reason
/// is on the job's row, so whichever replica sees the job finish writes the note.
pub(super) fn log_stop_notes(store: &mut dyn Store, jobs: &[JobRow], now: i64) {
    for job in jobs
        .iter()
        .filter(|job| job.state.is_finished() && job.stop_requested)
    {
        let Some(reason) = job
            .reason
            .as_deref()
            .filter(|r| r.starts_with(OVER_TIME_LIMIT))
        else {
            continue;
        };
        // Other replicas may have stored lines this one's memory has not counted.
        let end = match store.shared() {
            true => store.log_counts(&job.id).map(|counts| counts.lines),
            false => Ok(job.log_lines),
        };
        let note = stop_note(reason, now);
        if let Err(error) = end.and_then(|end| store.append_log(&job.id, end, &[&note])) {
            tracing::error!(job = %job.id, %error, now, "cannot log why the job was stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: JobState, assigned: Option<i64>, started: Option<i64>, stop: bool) -> JobRow {
        JobRow {
            seq: 1,
            state,
            attempts: 1,
            agent: Some("a".into()),
            stop_requested: stop,
            assigned_at: assigned,
            started_at: started,
            revision: 1,
            ..JobRow::queued("J".into(), "t".into(), "{}".into(), 0)
        }
    }

    #[test]
    fn the_time_limit_table() {
        use JobState::*;
        let over = Some("execution time limit of 1m exceeded".to_string());
        #[rustfmt::skip]
        let table: Vec<(&str, JobRow, Option<String>)> = vec![
            ("queued for hours: not timed", row(Queued, None, None, false), None),
            ("running, within the limit", row(Running, Some(0), Some(50), false), None),
            ("running, exactly at the limit", row(Running, Some(0), Some(40), false), None),
            ("running, past the limit", row(Running, Some(0), Some(39), false), over.clone()),
            ("assigned, never started, past the limit", row(Assigned, Some(39), None, false), over.clone()),
            ("counted from the start, not the assignment", row(Running, Some(0), Some(41), false), None),
            ("already being stopped", row(Stopping, Some(0), Some(0), true), None),
            ("stop already asked for", row(Running, Some(0), Some(0), true), None),
            ("finished", row(Finished, Some(0), Some(0), false), None),
        ];
        for (case, job, expected) in table {
            assert_eq!(over_time_limit(&job, 60, 100), expected, "{case}");
        }
    }

    #[test]
    fn the_stop_note_is_a_log_event() {
        let note = stop_note("execution time limit of 2s exceeded", 7);
        let event: LogEvent = serde_json::from_str(&note).unwrap();
        assert!(
            matches!(event, LogEvent::CmdOutput { timestamp: 7, ref output }
            if output.contains("execution time limit of 2s exceeded"))
        );
        assert!(!note.contains('\n'));
    }
}
