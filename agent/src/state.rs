//! The agent's control-plane state machine (docs/protocol.md §3), as a pure function
//! `step(state, event) -> (state, effects)`. The listener feeds it sync answers, job progress and
//! signals, and carries out the effects (start or stop the job, sync now, shut down); nothing
//! here does I/O or reads a clock, so every rule is table-tested.
//!
//! Beyond upstream: state changes happen synchronously with the sync answer that causes them
//! (§3.4 race); `stop-job` while the job is still starting is remembered, not a crash (§3.5);
//! with `disconnect-after-job` a second `run-job` is refused locally; `run-job` or
//! `wait-for-jobs` while a job is in progress are ignored rather than orphaning it.
//!
//! A network partition: the agent keeps its job going and retries for its give-up time
//! (`--give-up-after`, [`protocol::GIVE_UP_AFTER_SECS`] by default), then stops the job and exits
//! with `UNABLE_TO_SYNC`. When the link heals first, the server either takes the agent back (its
//! job was not handed to anyone else) or refuses its token: a 401 on sync means the server has
//! revoked this agent (the agent never registers again, so nothing can make the token valid), and
//! the agent stops its job at once and exits with `UNABLE_TO_SYNC` instead of retrying in vain.

use protocol::{AgentState, JobResult, ShutdownReason, SyncAction, SyncRequest, SyncResponse};

/// By default, no successful sync for this long (ms) shuts the agent down with `UNABLE_TO_SYNC`.
pub(crate) const UNABLE_TO_SYNC_AFTER_MS: u64 = protocol::GIVE_UP_AFTER_SECS as u64 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub phase: AgentState,
    pub job_id: String,
    pub job_result: Option<JobResult>,
    /// Unix seconds of the first SIGTERM/SIGINT, or 0. Never reset.
    pub interrupted_at: i64,
    /// The hardware fault that ended this machine's usefulness (a fatal GPU Xid), if any. Never
    /// reset: from it on the agent takes no job and reports itself interrupted.
    pub fault: Option<String>,
    /// Monotonic milliseconds of the last successful sync (initially: when the loop started).
    pub last_successful_sync_ms: u64,
    pub jobs_taken: u32,
    pub single_job: bool,
    /// A shutdown was decided; nothing else happens after it.
    pub shutting_down: bool,
    /// No successful sync for this long (ms) gives up: `UNABLE_TO_SYNC`.
    pub give_up_after_ms: u64,
}

impl State {
    pub fn new(single_job: bool, now_ms: u64) -> State {
        State {
            phase: AgentState::WaitingForJobs,
            job_id: String::new(),
            job_result: None,
            interrupted_at: 0,
            fault: None,
            last_successful_sync_ms: now_ms,
            jobs_taken: 0,
            single_job,
            shutting_down: false,
            give_up_after_ms: UNABLE_TO_SYNC_AFTER_MS,
        }
    }

    /// With a give-up time other than upstream's 10 minutes (`--give-up-after`).
    pub(crate) fn with_give_up_after(self, give_up_after_ms: u64) -> State {
        State {
            give_up_after_ms,
            ..self
        }
    }

    /// The body of the next sync.
    pub(crate) fn sync_request(&self) -> SyncRequest {
        SyncRequest {
            state: self.phase,
            job_id: self.job_id.clone(),
            job_result: self.job_result,
            interrupted_at: self.interrupted_at,
            flotilla_fault: self.fault.clone(),
        }
    }

    fn job_in_progress(&self) -> bool {
        matches!(
            self.phase,
            AgentState::StartingJob | AgentState::RunningJob | AgentState::StoppingJob
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    SyncSucceeded {
        response: SyncResponse,
        now_ms: u64,
    },
    SyncFailed {
        now_ms: u64,
    },
    /// The server answered 401 to a sync: it no longer accepts this agent's token.
    SyncRefused,
    /// The job was fetched and its executor built; it is running.
    JobRunning,
    /// The job ended (teardown done, logs delivered) or could not be fetched/built.
    JobFinished {
        result: JobResult,
    },
    /// SIGTERM or SIGINT arrived.
    Interrupted {
        unix_now: i64,
    },
    /// The hardware this agent runs on failed (a fatal GPU Xid): `reason` says how.
    HardwareFault {
        reason: String,
        unix_now: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Fetch job `job_id` and run it in the background.
    StartJob { job_id: String },
    /// Stop the current job (kill its shell session).
    StopJob,
    /// Disconnect, run the shutdown hook, exit with the reason's code.
    Shutdown { reason: ShutdownReason },
    /// Sync again without waiting.
    SyncNow,
    /// Wait this long (ms) before the next sync; `None` means upstream's random 3–6 s.
    NextSyncIn { millis: Option<u64> },
    /// Something worth a line in the agent log.
    Note(String),
}

pub fn step(state: &State, event: Event) -> (State, Vec<Effect>) {
    let mut next = state.clone();
    let mut effects = Vec::new();
    if state.shutting_down {
        return (next, effects);
    }
    match event {
        Event::SyncSucceeded { response, now_ms } => {
            next.last_successful_sync_ms = now_ms;
            let millis = (response.next_sync_after > 0).then_some(response.next_sync_after as u64);
            apply_action(&mut next, response, &mut effects);
            if !next.shutting_down {
                effects.push(Effect::NextSyncIn { millis });
            }
        }
        Event::SyncFailed { now_ms } => {
            if now_ms.saturating_sub(state.last_successful_sync_ms) > state.give_up_after_ms {
                effects.push(Effect::Note(give_up_note(state.give_up_after_ms)));
                give_up(&mut next, &mut effects);
            } else {
                effects.push(Effect::NextSyncIn { millis: None });
            }
        }
        Event::SyncRefused => {
            effects.push(Effect::Note(
                "The server refused this agent's token (401): it was declared lost and its job \
                 is no longer its own. Stopping at once."
                    .into(),
            ));
            give_up(&mut next, &mut effects);
        }
        Event::JobRunning => {
            if state.phase == AgentState::StartingJob {
                next.phase = AgentState::RunningJob;
            }
        }
        Event::JobFinished { result } => {
            if state.job_in_progress() {
                next.phase = AgentState::FinishedJob;
                next.job_result = Some(result);
                effects.push(Effect::SyncNow);
            }
        }
        Event::Interrupted { unix_now } => {
            if state.interrupted_at == 0 {
                next.interrupted_at = unix_now;
                effects.push(Effect::Note("Termination signal received".into()));
                effects.push(Effect::SyncNow);
            }
        }
        Event::HardwareFault { reason, unix_now } => {
            hardware_fault(&mut next, reason, unix_now, &mut effects)
        }
    }
    (next, effects)
}

/// A fatal hardware fault: the job cannot go on on this machine, so it is stopped at once (not
/// after the interruption grace period: its results could be corrupt), and the agent reports
/// itself interrupted with the fault's reason, so the server re-queues the job and tells the
/// agent to shut down. Only the first fault counts.
fn hardware_fault(next: &mut State, reason: String, unix_now: i64, effects: &mut Vec<Effect>) {
    if next.fault.is_some() {
        return;
    }
    effects.push(Effect::Note(format!(
        "{reason}: stopping, this machine takes no more jobs"
    )));
    next.fault = Some(reason);
    if next.interrupted_at == 0 {
        next.interrupted_at = unix_now;
    }
    if next.job_in_progress() && next.phase != AgentState::StoppingJob {
        next.phase = AgentState::StoppingJob;
        effects.push(Effect::StopJob);
    }
    effects.push(Effect::SyncNow);
}

/// The agent cannot go on with this server: stop the job, if one runs, and leave with
/// `UNABLE_TO_SYNC` (the shutdown itself stops the job; the phase says so in the log).
fn give_up(next: &mut State, effects: &mut Vec<Effect>) {
    if next.job_in_progress() && next.phase != AgentState::StoppingJob {
        next.phase = AgentState::StoppingJob;
        effects.push(Effect::StopJob);
    }
    next.shutting_down = true;
    effects.push(Effect::Shutdown {
        reason: ShutdownReason::UnableToSync,
    });
}

/// Upstream's line for 10 minutes; the real figure for any other give-up time.
fn give_up_note(give_up_after_ms: u64) -> String {
    if give_up_after_ms == 10 * 60 * 1000 {
        "Unable to sync with Semaphore for over 10 minutes.".into()
    } else {
        format!(
            "Unable to sync with Semaphore for over {} seconds.",
            give_up_after_ms / 1000
        )
    }
}

fn apply_action(next: &mut State, response: SyncResponse, effects: &mut Vec<Effect>) {
    match response.action {
        SyncAction::Continue | SyncAction::Ignored(_) => {}
        SyncAction::RunJob => {
            if next.job_in_progress() {
                effects.push(Effect::Note(format!(
                    "Ignoring run-job for {}: job {} is still in progress",
                    response.job_id, next.job_id
                )));
            } else if let Some(fault) = &next.fault {
                effects.push(Effect::Note(format!(
                    "Ignoring run-job for {}: this machine is faulty ({fault})",
                    response.job_id
                )));
            } else if next.single_job && next.jobs_taken > 0 {
                effects.push(Effect::Note(format!(
                    "Ignoring run-job for {}: this agent runs a single job (disconnect-after-job)",
                    response.job_id
                )));
            } else {
                next.phase = AgentState::StartingJob;
                next.job_id = response.job_id.clone();
                next.job_result = None;
                next.jobs_taken += 1;
                effects.push(Effect::StartJob {
                    job_id: response.job_id,
                });
            }
        }
        SyncAction::StopJob => {
            if next.job_in_progress() && next.phase != AgentState::StoppingJob {
                next.phase = AgentState::StoppingJob;
                effects.push(Effect::StopJob);
            }
        }
        SyncAction::Shutdown => {
            effects.push(Effect::Note(format!(
                "Agent shutdown requested by Semaphore due to: {}",
                response.shutdown_reason.api_str()
            )));
            next.shutting_down = true;
            effects.push(Effect::Shutdown {
                reason: response.shutdown_reason,
            });
        }
        SyncAction::WaitForJobs => {
            if next.job_in_progress() {
                effects.push(Effect::Note(format!(
                    "Ignoring wait-for-jobs: job {} is still in progress",
                    next.job_id
                )));
            } else {
                next.phase = AgentState::WaitingForJobs;
                next.job_id.clear();
                next.job_result = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(action: &str, job_id: &str, reason: &str, next_sync_after: i64) -> SyncResponse {
        SyncResponse {
            action: SyncAction::parse(action),
            job_id: job_id.into(),
            shutdown_reason: ShutdownReason::from_api(reason),
            next_sync_after,
        }
    }

    fn synced(action: &str, job_id: &str) -> Event {
        Event::SyncSucceeded {
            response: response(action, job_id, "", 0),
            now_ms: 1000,
        }
    }

    fn with_phase(phase: AgentState, job_id: &str, single_job: bool, jobs_taken: u32) -> State {
        State {
            phase,
            job_id: job_id.into(),
            jobs_taken,
            ..State::new(single_job, 0)
        }
    }

    fn without_notes(effects: Vec<Effect>) -> Vec<Effect> {
        effects
            .into_iter()
            .filter(|e| !matches!(e, Effect::Note(_)))
            .collect()
    }

    #[test]
    #[allow(clippy::too_many_lines)] // a table: one row per scenario, read top to bottom
    fn transition_table() {
        use AgentState::*;
        let wait = Effect::NextSyncIn { millis: None };
        let give_up = Effect::Shutdown {
            reason: ShutdownReason::UnableToSync,
        };
        let rows: Vec<(State, Event, AgentState, Vec<Effect>)> = vec![
            (
                with_phase(WaitingForJobs, "", false, 0),
                synced("continue", ""),
                WaitingForJobs,
                vec![wait.clone()],
            ),
            (
                with_phase(WaitingForJobs, "", false, 0),
                synced("run-job", "J1"),
                StartingJob,
                vec![
                    Effect::StartJob {
                        job_id: "J1".into(),
                    },
                    wait.clone(),
                ],
            ),
            // §3.4: the state is starting-job in the very next sync.
            (
                with_phase(StartingJob, "J1", false, 1),
                Event::JobRunning,
                RunningJob,
                vec![],
            ),
            // §3.5: stop-job during starting-job is remembered, not a crash.
            (
                with_phase(StartingJob, "J1", false, 1),
                synced("stop-job", "J1"),
                StoppingJob,
                vec![Effect::StopJob, wait.clone()],
            ),
            (
                with_phase(StoppingJob, "J1", false, 1),
                Event::JobRunning,
                StoppingJob,
                vec![],
            ),
            (
                with_phase(RunningJob, "J1", false, 1),
                synced("stop-job", "J1"),
                StoppingJob,
                vec![Effect::StopJob, wait.clone()],
            ),
            (
                with_phase(StoppingJob, "J1", false, 1),
                synced("stop-job", "J1"),
                StoppingJob,
                vec![wait.clone()],
            ),
            (
                with_phase(RunningJob, "J1", false, 1),
                Event::JobFinished {
                    result: JobResult::Passed,
                },
                FinishedJob,
                vec![Effect::SyncNow],
            ),
            (
                with_phase(FinishedJob, "J1", false, 1),
                synced("stop-job", "J1"),
                FinishedJob,
                vec![wait.clone()],
            ),
            (
                with_phase(FinishedJob, "J1", false, 1),
                synced("wait-for-jobs", ""),
                WaitingForJobs,
                vec![wait.clone()],
            ),
            (
                with_phase(WaitingForJobs, "", false, 0),
                synced("stop-job", "J1"),
                WaitingForJobs,
                vec![wait.clone()],
            ),
            // Safety nets.
            (
                with_phase(RunningJob, "J1", false, 1),
                synced("run-job", "J2"),
                RunningJob,
                vec![wait.clone()],
            ),
            (
                with_phase(RunningJob, "J1", false, 1),
                synced("wait-for-jobs", ""),
                RunningJob,
                vec![wait.clone()],
            ),
            (
                with_phase(WaitingForJobs, "", true, 1),
                synced("run-job", "J2"),
                WaitingForJobs,
                vec![wait.clone()],
            ),
            (
                with_phase(WaitingForJobs, "", true, 0),
                synced("run-job", "J2"),
                StartingJob,
                vec![
                    Effect::StartJob {
                        job_id: "J2".into(),
                    },
                    wait.clone(),
                ],
            ),
            // A fetch failure finishes the job as failed.
            (
                with_phase(StartingJob, "J1", false, 1),
                Event::JobFinished {
                    result: JobResult::Failed,
                },
                FinishedJob,
                vec![Effect::SyncNow],
            ),
            // Unknown actions are ignored.
            (
                with_phase(WaitingForJobs, "", false, 0),
                synced("dance", ""),
                WaitingForJobs,
                vec![wait.clone()],
            ),
            (
                with_phase(WaitingForJobs, "", false, 0),
                Event::JobFinished {
                    result: JobResult::Passed,
                },
                WaitingForJobs,
                vec![],
            ),
            // A healed partition: the server refused the token (the job went to someone else,
            // or the agent was forgotten). Stop at once and leave, whatever the phase.
            (
                with_phase(RunningJob, "J1", true, 1),
                Event::SyncRefused,
                StoppingJob,
                vec![Effect::StopJob, give_up.clone()],
            ),
            (
                with_phase(StartingJob, "J1", true, 1),
                Event::SyncRefused,
                StoppingJob,
                vec![Effect::StopJob, give_up.clone()],
            ),
            (
                with_phase(StoppingJob, "J1", true, 1),
                Event::SyncRefused,
                StoppingJob,
                vec![give_up.clone()],
            ),
            (
                with_phase(FinishedJob, "J1", true, 1),
                Event::SyncRefused,
                FinishedJob,
                vec![give_up.clone()],
            ),
            (
                with_phase(WaitingForJobs, "", false, 0),
                Event::SyncRefused,
                WaitingForJobs,
                vec![give_up.clone()],
            ),
            // A partition longer than the give-up time during a job: the job is stopped too.
            (
                with_phase(RunningJob, "J1", true, 1),
                Event::SyncFailed {
                    now_ms: UNABLE_TO_SYNC_AFTER_MS + 1,
                },
                StoppingJob,
                vec![Effect::StopJob, give_up.clone()],
            ),
            // Within the give-up time the job keeps going and the agent retries.
            (
                with_phase(RunningJob, "J1", true, 1),
                Event::SyncFailed {
                    now_ms: UNABLE_TO_SYNC_AFTER_MS,
                },
                RunningJob,
                vec![wait.clone()],
            ),
        ];
        for (index, (state, event, phase, effects)) in rows.into_iter().enumerate() {
            let (next, got) = step(&state, event.clone());
            assert_eq!(next.phase, phase, "row {index}: {event:?}");
            assert_eq!(without_notes(got), effects, "row {index}: {event:?}");
        }
    }

    #[test]
    fn finished_job_is_reported_in_the_next_sync() {
        let state = with_phase(AgentState::RunningJob, "J1", false, 1);
        let (next, _) = step(
            &state,
            Event::JobFinished {
                result: JobResult::Stopped,
            },
        );
        let request = next.sync_request();
        assert_eq!(request.state, AgentState::FinishedJob);
        assert_eq!(request.job_id, "J1");
        assert_eq!(request.job_result, Some(JobResult::Stopped));
        let (waiting, _) = step(&next, synced("wait-for-jobs", ""));
        assert_eq!(waiting.sync_request(), SyncRequest::default());
    }

    #[test]
    fn next_sync_after_is_honoured_only_when_positive() {
        let state = State::new(false, 0);
        for (value, expected) in [(1000, Some(1000)), (0, None), (-5, None)] {
            let event = Event::SyncSucceeded {
                response: response("continue", "", "", value),
                now_ms: 1,
            };
            let (_, effects) = step(&state, event);
            assert_eq!(
                effects,
                vec![Effect::NextSyncIn { millis: expected }],
                "{value}"
            );
        }
    }

    #[test]
    fn shutdown_reasons_map_and_end_everything() {
        for (reason, expected) in [
            ("idle", ShutdownReason::Idle),
            ("job-finished", ShutdownReason::JobFinished),
            ("requested", ShutdownReason::Requested),
            ("interrupted", ShutdownReason::Interrupted),
            ("", ShutdownReason::Unknown),
            ("other", ShutdownReason::Unknown),
        ] {
            let state = State::new(false, 0);
            let event = Event::SyncSucceeded {
                response: response("shutdown", "", reason, 1000),
                now_ms: 5,
            };
            let (next, effects) = step(&state, event);
            assert!(next.shutting_down);
            assert_eq!(
                without_notes(effects),
                vec![Effect::Shutdown { reason: expected }]
            );
            let (_, after) = step(&next, synced("run-job", "J"));
            assert!(after.is_empty(), "nothing happens after shutdown");
        }
    }

    #[test]
    fn ten_minutes_without_a_successful_sync_shuts_down_with_exit_code_1() {
        let state = State::new(false, 0);
        let (state, effects) = step(
            &state,
            Event::SyncFailed {
                now_ms: UNABLE_TO_SYNC_AFTER_MS,
            },
        );
        assert_eq!(effects, vec![Effect::NextSyncIn { millis: None }]);
        let (state, _) = step(
            &state,
            Event::SyncSucceeded {
                response: response("continue", "", "", 0),
                now_ms: 500_000,
            },
        );
        let (_, effects) = step(
            &state,
            Event::SyncFailed {
                now_ms: 500_000 + UNABLE_TO_SYNC_AFTER_MS,
            },
        );
        assert_eq!(
            without_notes(effects),
            vec![Effect::NextSyncIn { millis: None }]
        );
        let (next, effects) = step(
            &state,
            Event::SyncFailed {
                now_ms: 500_001 + UNABLE_TO_SYNC_AFTER_MS,
            },
        );
        assert!(next.shutting_down);
        assert_eq!(
            without_notes(effects),
            vec![Effect::Shutdown {
                reason: ShutdownReason::UnableToSync
            }]
        );
        assert_eq!(ShutdownReason::UnableToSync.exit_code(), 1);
    }

    #[test]
    fn the_give_up_time_is_configurable_and_defaults_to_the_shared_number() {
        assert_eq!(
            State::new(false, 0).give_up_after_ms,
            protocol::GIVE_UP_AFTER_SECS as u64 * 1000
        );
        let state = State::new(false, 1_000).with_give_up_after(30_000);
        let (_, effects) = step(&state, Event::SyncFailed { now_ms: 31_000 });
        assert_eq!(effects, vec![Effect::NextSyncIn { millis: None }]);
        let (next, effects) = step(&state, Event::SyncFailed { now_ms: 31_001 });
        assert!(next.shutting_down);
        assert_eq!(
            effects,
            vec![
                Effect::Note("Unable to sync with Semaphore for over 30 seconds.".into()),
                Effect::Shutdown {
                    reason: ShutdownReason::UnableToSync
                }
            ]
        );
    }

    #[test]
    fn interruption_is_sticky_and_forces_one_sync() {
        let state = State::new(false, 0);
        let (state, effects) = step(
            &state,
            Event::Interrupted {
                unix_now: 1_700_000_000,
            },
        );
        assert_eq!(without_notes(effects), vec![Effect::SyncNow]);
        assert_eq!(state.sync_request().interrupted_at, 1_700_000_000);
        let (state, effects) = step(
            &state,
            Event::Interrupted {
                unix_now: 1_700_000_099,
            },
        );
        assert!(effects.is_empty());
        assert_eq!(state.interrupted_at, 1_700_000_000);
        let (state, _) = step(&state, synced("wait-for-jobs", ""));
        assert_eq!(state.interrupted_at, 1_700_000_000);
    }

    #[test]
    fn a_hardware_fault_stops_the_job_at_once_and_refuses_the_next() {
        let fault = |reason: &str| Event::HardwareFault {
            reason: reason.into(),
            unix_now: 1_700_000_000,
        };
        let running = with_phase(AgentState::RunningJob, "J1", false, 1);
        let (state, effects) = step(&running, fault("GPU fault on i-1: Xid 79"));
        assert_eq!(state.phase, AgentState::StoppingJob);
        assert_eq!(
            without_notes(effects),
            vec![Effect::StopJob, Effect::SyncNow]
        );
        let report = state.sync_request();
        assert_eq!(report.interrupted_at, 1_700_000_000);
        assert_eq!(
            report.flotilla_fault.as_deref(),
            Some("GPU fault on i-1: Xid 79")
        );
        // Only the first fault counts; an earlier interruption's time is kept.
        let (again, effects) = step(&state, fault("GPU fault on i-1: Xid 48"));
        assert_eq!(again, state);
        assert!(effects.is_empty());
        let interrupted = State {
            interrupted_at: 1_600_000_000,
            ..with_phase(AgentState::WaitingForJobs, "", false, 0)
        };
        let (idle, effects) = step(&interrupted, fault("GPU fault on i-1: Xid 79"));
        assert_eq!(idle.interrupted_at, 1_600_000_000);
        assert_eq!(without_notes(effects), vec![Effect::SyncNow]);
        // A faulty machine takes no job, though a healthy one in the same state does.
        let (after, effects) = step(&idle, synced("run-job", "J2"));
        assert_eq!(after.phase, AgentState::WaitingForJobs);
        assert!(!effects.iter().any(|e| matches!(e, Effect::StartJob { .. })));
        let (healthy, effects) = step(&interrupted, synced("run-job", "J2"));
        assert_eq!(healthy.phase, AgentState::StartingJob);
        assert!(effects.iter().any(|e| matches!(e, Effect::StartJob { .. })));
        // A report without a fault is upstream's body, byte for byte.
        let text = serde_json::to_string(&running.sync_request()).unwrap();
        assert!(!text.contains("flotilla_fault"), "{text}");
    }
}
