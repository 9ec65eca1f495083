//! The hub's rules end to end through its core API (no HTTP): registration, assignment, log
//! intake, finishing, stops, lost agents and re-queues, and recovery from the database.

use testkit::stores;

use crate::core_support::{config, report};
use hub::hub::{Hub, HubError, Invalid};
use protocol::{
    AgentState, JobResult, JobSpec, JobState, RegisterRequest, ShutdownReason, SyncAction,
    SyncRequest,
};

const T0: i64 = 1_700_000_000;

fn spec(commands: &[&str]) -> JobSpec {
    JobSpec::from_commands(
        "linux",
        &commands.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
    )
}

fn registration(name: &str, single_job: bool) -> RegisterRequest {
    RegisterRequest {
        name: name.into(),
        version: "v0.1.0".into(),
        single_job,
        ..RegisterRequest::default()
    }
}

struct Setup {
    hub: Hub,
    registration_token: String,
}

fn setup() -> Setup {
    let hub = stores::fresh_hub(config(), T0).unwrap();
    let registration_token = hub.create_agent_type("linux", T0).unwrap();
    Setup {
        hub,
        registration_token,
    }
}

/// Registers an agent and syncs until it is told to run a job; returns (token, job id).
fn take_job(s: &Setup, name: &str, single_job: bool, now: i64) -> (String, String) {
    let agent = s
        .hub
        .register(&s.registration_token, registration(name, single_job), now)
        .unwrap();
    let response = s
        .hub
        .sync(
            &agent.token,
            &report(AgentState::WaitingForJobs, "", None),
            now,
        )
        .unwrap();
    assert_eq!(response.action, SyncAction::RunJob);
    (agent.token, response.job_id)
}

#[test]
fn a_job_runs_from_queue_to_passed() {
    let s = setup();
    let submitted = s.hub.submit(spec(&["echo hi"]), T0).unwrap();
    assert_eq!(submitted.state, JobState::Queued);
    let metrics = s.hub.metrics(&s.registration_token, T0 + 5).unwrap();
    assert_eq!(
        (
            metrics.jobs.queued,
            metrics.jobs.running,
            metrics.oldest_queued_seconds
        ),
        (1, 0, Some(5))
    );

    let (token, job_id) = take_job(&s, "agent-0001", true, T0 + 1);
    assert_eq!(job_id, submitted.id);
    assert_eq!(s.hub.job(&job_id).unwrap().state, JobState::Assigned);
    let metrics = s.hub.metrics(&s.registration_token, T0 + 1).unwrap();
    assert_eq!(
        (
            metrics.jobs.queued,
            metrics.jobs.running,
            metrics.agents.occupied
        ),
        (0, 1, 1)
    );

    let request = s.hub.job_request(&token, &job_id, T0 + 1).unwrap();
    assert_eq!(request.commands[0].directive, "echo hi");
    assert_eq!(request.logger.method, "push");
    assert_eq!(
        request.logger.url,
        format!("http://hub.test/api/v1/logs/{job_id}")
    );

    s.hub
        .sync(
            &token,
            &report(AgentState::RunningJob, &job_id, None),
            T0 + 2,
        )
        .unwrap();
    assert_eq!(s.hub.job(&job_id).unwrap().started_at, Some(T0 + 2));
    let line = r#"{"event":"job_started","timestamp":1}"#;
    s.hub
        .push_logs(
            &job_id,
            &request.logger.token,
            0,
            &format!("{line}\n{line}\n"),
            T0 + 2,
        )
        .unwrap();
    // A retried batch with the same start_from is idempotent; an overlapping one appends only new lines.
    s.hub
        .push_logs(
            &job_id,
            &request.logger.token,
            0,
            &format!("{line}\n{line}\n"),
            T0 + 2,
        )
        .unwrap();
    s.hub
        .push_logs(
            &job_id,
            &request.logger.token,
            1,
            &format!("{line}\n{line}\n"),
            T0 + 2,
        )
        .unwrap();
    assert_eq!(s.hub.logs(&job_id, 0, 100).unwrap().lines.len(), 3);
    assert!(matches!(
        s.hub
            .push_logs(&job_id, &request.logger.token, 9, line, T0 + 2),
        Err(HubError::LogGap {
            start_from: 9,
            lines: 3
        })
    ));
    assert!(matches!(
        s.hub.push_logs(&job_id, "wrong", 3, line, T0 + 2),
        Err(HubError::Unauthorized)
    ));
    assert!(matches!(
        s.hub
            .push_logs(&job_id, &request.logger.token, 3, "not json", T0 + 2),
        Err(HubError::Invalid(Invalid::LogLineNotJson { line: 1 }))
    ));

    let response = s
        .hub
        .sync(
            &token,
            &report(AgentState::FinishedJob, &job_id, Some(JobResult::Passed)),
            T0 + 3,
        )
        .unwrap();
    assert_eq!(response.action, SyncAction::Shutdown);
    assert_eq!(response.shutdown_reason, ShutdownReason::JobFinished);
    let job = s.hub.job(&job_id).unwrap();
    assert_eq!(
        (job.state, job.result, job.finished_at),
        (JobState::Finished, Some(JobResult::Passed), Some(T0 + 3))
    );
    assert!(s.hub.logs(&job_id, 0, 100).unwrap().job_finished);
    s.hub.disconnect(&token, T0 + 4).unwrap();
    assert!(matches!(
        s.hub.sync(
            &token,
            &report(AgentState::WaitingForJobs, "", None),
            T0 + 5
        ),
        Err(HubError::Unauthorized)
    ));
}

#[test]
fn bad_tokens_are_refused() {
    let s = setup();
    assert!(matches!(
        s.hub
            .register("nope", registration("agent-0001", false), T0),
        Err(HubError::Unauthorized)
    ));
    assert!(matches!(
        s.hub.metrics("nope", T0),
        Err(HubError::Unauthorized)
    ));
    assert!(matches!(
        s.hub
            .sync("nope", &report(AgentState::WaitingForJobs, "", None), T0),
        Err(HubError::Unauthorized)
    ));
    assert!(!s.hub.is_admin("nope") && s.hub.is_admin("admin-secret"));
    assert!(matches!(
        s.hub.submit(
            JobSpec {
                agent_type: "gpu".into(),
                ..spec(&["x"])
            },
            T0
        ),
        Err(HubError::JobForUnknownAgentType { .. })
    ));
    assert!(matches!(
        s.hub.create_agent_type("linux", T0),
        Err(HubError::AgentTypeExists { .. })
    ));
    assert!(matches!(
        s.hub.create_agent_type("bad name", T0),
        Err(HubError::Invalid(Invalid::AgentTypeName(_)))
    ));
}

#[test]
fn a_user_stop_reaches_the_agent_and_a_queued_stop_is_immediate() {
    let s = setup();
    let queued = s.hub.submit(spec(&["sleep 100"]), T0).unwrap();
    let later = s.hub.submit(spec(&["sleep 100"]), T0).unwrap();
    let (token, job_id) = take_job(&s, "agent-0001", false, T0);
    assert_eq!(job_id, queued.id, "oldest first");
    let stopped = s.hub.stop_job(&later.id, T0 + 1).unwrap();
    assert_eq!(
        (stopped.state, stopped.result),
        (JobState::Finished, Some(JobResult::Stopped))
    );
    assert_eq!(
        s.hub.stop_job(&job_id, T0 + 1).unwrap().state,
        JobState::Stopping
    );
    let response = s
        .hub
        .sync(
            &token,
            &report(AgentState::RunningJob, &job_id, None),
            T0 + 2,
        )
        .unwrap();
    assert_eq!(
        (response.action, response.job_id.as_str()),
        (SyncAction::StopJob, job_id.as_str())
    );
    let response = s
        .hub
        .sync(
            &token,
            &report(AgentState::FinishedJob, &job_id, Some(JobResult::Stopped)),
            T0 + 3,
        )
        .unwrap();
    assert_eq!(response.action, SyncAction::WaitForJobs);
    assert_eq!(s.hub.job(&job_id).unwrap().result, Some(JobResult::Stopped));
}

#[test]
fn a_lost_agents_job_is_requeued_once_then_failed() {
    let s = setup();
    let job = s.hub.submit(spec(&["make"]), T0).unwrap();
    let (_, first) = take_job(&s, "agent-0001", false, T0);
    assert_eq!(first, job.id);
    assert_eq!(s.hub.maintain(T0 + 30).unwrap(), 0);
    assert_eq!(
        s.hub.maintain(T0 + 61).unwrap(),
        1,
        "no sync for over 60 s: lost"
    );
    let requeued = s.hub.job(&job.id).unwrap();
    assert_eq!((requeued.state, requeued.attempts), (JobState::Queued, 1));
    assert!(requeued.reason.unwrap().contains("lost"));

    let (_, second) = take_job(&s, "agent-0002", false, T0 + 62);
    assert_eq!(second, job.id);
    assert_eq!(s.hub.maintain(T0 + 200).unwrap(), 1);
    let failed = s.hub.job(&job.id).unwrap();
    assert_eq!(
        (failed.state, failed.result, failed.attempts),
        (JobState::Finished, Some(JobResult::Failed), 2)
    );
}

#[test]
fn an_interrupted_agents_stopped_job_is_requeued_but_a_failed_job_never_is() {
    let s = setup();
    let job = s.hub.submit(spec(&["train"]), T0).unwrap();
    let (token, job_id) = take_job(&s, "agent-0001", false, T0);
    let interrupted = SyncRequest {
        interrupted_at: T0 + 1,
        ..report(AgentState::RunningJob, &job_id, None)
    };
    assert_eq!(
        s.hub.sync(&token, &interrupted, T0 + 1).unwrap().action,
        SyncAction::StopJob,
        "grace period 0"
    );
    let finished = SyncRequest {
        interrupted_at: T0 + 1,
        ..report(AgentState::FinishedJob, &job_id, Some(JobResult::Stopped))
    };
    let response = s.hub.sync(&token, &finished, T0 + 2).unwrap();
    assert_eq!(
        (response.action, response.shutdown_reason),
        (SyncAction::Shutdown, ShutdownReason::Interrupted)
    );
    assert_eq!(s.hub.job(&job.id).unwrap().state, JobState::Queued);

    let (token, job_id) = take_job(&s, "agent-0002", false, T0 + 3);
    s.hub
        .sync(
            &token,
            &report(AgentState::FinishedJob, &job_id, Some(JobResult::Failed)),
            T0 + 4,
        )
        .unwrap();
    assert_eq!(s.hub.job(&job.id).unwrap().result, Some(JobResult::Failed));
}

/// An agent whose GPU failed mid-job (a fatal Xid) reports the fault with its interruption: the
/// job goes back to the queue with the fault as its reason (stopped, or failed before the agent
/// saw the fault), once, and a second agent finishes it. A failure on a healthy machine stays
/// failed (the control: the same report without the fault).
#[test]
fn a_job_ended_by_a_hardware_fault_is_requeued_with_the_fault_as_its_reason() {
    let s = setup();
    let fault = "GPU fault on agent-0001: Xid 79 on PCI 0000:00:1e (GPU has fallen off the bus)";
    for (result, n) in [(JobResult::Stopped, 1), (JobResult::Failed, 2)] {
        let job = s.hub.submit(spec(&["train"]), T0).unwrap();
        let (token, job_id) = take_job(&s, &format!("agent-f{n}"), false, T0);
        let finished = SyncRequest {
            interrupted_at: T0 + 1,
            flotilla_fault: Some(fault.to_string()),
            ..report(AgentState::FinishedJob, &job_id, Some(result))
        };
        let response = s.hub.sync(&token, &finished, T0 + 2).unwrap();
        assert_eq!(response.action, SyncAction::Shutdown, "{result:?}");
        let requeued = s.hub.job(&job.id).unwrap();
        assert_eq!(requeued.state, JobState::Queued, "{result:?}");
        assert_eq!(
            requeued.reason.as_deref(),
            Some(format!("re-queued: {fault}").as_str())
        );
        let (token, job_id) = take_job(&s, &format!("agent-g{n}"), false, T0 + 3);
        assert_eq!(job_id, job.id);
        let passed = report(AgentState::FinishedJob, &job_id, Some(JobResult::Passed));
        s.hub.sync(&token, &passed, T0 + 4).unwrap();
        let done = s.hub.job(&job.id).unwrap();
        assert_eq!((done.result, done.attempts), (Some(JobResult::Passed), 2));
    }
    let job = s.hub.submit(spec(&["train"]), T0).unwrap();
    let (token, job_id) = take_job(&s, "agent-h", false, T0);
    let failed = report(AgentState::FinishedJob, &job_id, Some(JobResult::Failed));
    s.hub.sync(&token, &failed, T0 + 1).unwrap();
    assert_eq!(s.hub.job(&job.id).unwrap().result, Some(JobResult::Failed));
}

#[test]
fn idle_agents_are_shut_down_after_their_idle_timeout() {
    let s = setup();
    let agent = s
        .hub
        .register(
            &s.registration_token,
            RegisterRequest {
                idle_timeout: 30,
                ..registration("agent-0001", false)
            },
            T0,
        )
        .unwrap();
    let waiting = report(AgentState::WaitingForJobs, "", None);
    assert_eq!(
        s.hub.sync(&agent.token, &waiting, T0 + 30).unwrap().action,
        SyncAction::Continue
    );
    let response = s.hub.sync(&agent.token, &waiting, T0 + 31).unwrap();
    assert_eq!(
        (response.action, response.shutdown_reason),
        (SyncAction::Shutdown, ShutdownReason::Idle)
    );
}

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (registration_token, agent_token, running, queued, done) = {
        let hub = stores::open(dir.path(), config(), T0).unwrap();
        let registration_token = hub.create_agent_type("linux", T0).unwrap();
        let s = Setup {
            hub,
            registration_token: registration_token.clone(),
        };
        let done_job = s.hub.submit(spec(&["a"]), T0).unwrap();
        let (token, first) = take_job(&s, "agent-0001", false, T0);
        assert_eq!(first, done_job.id);
        s.hub
            .sync(
                &token,
                &report(AgentState::FinishedJob, &first, Some(JobResult::Passed)),
                T0 + 1,
            )
            .unwrap();
        s.hub
            .sync(
                &token,
                &report(AgentState::WaitingForJobs, "", None),
                T0 + 1,
            )
            .unwrap();
        let running = s.hub.submit(spec(&["b"]), T0 + 2).unwrap();
        let queued = s.hub.submit(spec(&["c"]), T0 + 2).unwrap();
        let response = s
            .hub
            .sync(
                &token,
                &report(AgentState::WaitingForJobs, "", None),
                T0 + 3,
            )
            .unwrap();
        assert_eq!(response.job_id, running.id);
        s.hub
            .sync(
                &token,
                &report(AgentState::RunningJob, &running.id, None),
                T0 + 4,
            )
            .unwrap();
        s.hub.maintain(T0 + 4).unwrap();
        (
            registration_token,
            token,
            running.id,
            queued.id,
            done_job.id,
        )
    };
    // The process is gone; a new hub on the same data directory carries on.
    let hub = stores::open(dir.path(), config(), T0 + 100).unwrap();
    assert_eq!(hub.job(&done).unwrap().result, Some(JobResult::Passed));
    assert_eq!(hub.job(&running).unwrap().state, JobState::Running);
    assert_eq!(hub.job(&queued).unwrap().state, JobState::Queued);
    let metrics = hub.metrics(&registration_token, T0 + 100).unwrap();
    assert_eq!(
        (
            metrics.jobs.queued,
            metrics.jobs.running,
            metrics.agents.occupied
        ),
        (1, 1, 1)
    );
    // The agent resumes with its old token and finishes its job; nothing was lost or duplicated.
    hub.sync(
        &agent_token,
        &report(AgentState::RunningJob, &running, None),
        T0 + 101,
    )
    .unwrap();
    let response = hub
        .sync(
            &agent_token,
            &report(AgentState::FinishedJob, &running, Some(JobResult::Passed)),
            T0 + 102,
        )
        .unwrap();
    assert_eq!(response.action, SyncAction::WaitForJobs);
    let response = hub
        .sync(
            &agent_token,
            &report(AgentState::WaitingForJobs, "", None),
            T0 + 103,
        )
        .unwrap();
    assert_eq!(
        (response.action, response.job_id),
        (SyncAction::RunJob, queued.clone())
    );
    assert_eq!(hub.list_jobs(None, 10).unwrap().len(), 3);
}

#[test]
fn full_logs_answer_422() {
    let mut config = config();
    // Two lines fit; a third would overshoot the cap, so it is refused before it is stored.
    config.max_log_bytes = 200;
    let hub = stores::fresh_hub(config, T0).unwrap();
    let registration_token = hub.create_agent_type("linux", T0).unwrap();
    let s = Setup {
        hub,
        registration_token,
    };
    s.hub.submit(spec(&["x"]), T0).unwrap();
    let (token, job_id) = take_job(&s, "agent-0001", false, T0);
    let request = s.hub.job_request(&token, &job_id, T0).unwrap();
    let line = r#"{"event":"cmd_output","timestamp":1,"output":"0123456789012345678901234567890123456789"}"#;
    s.hub
        .push_logs(
            &job_id,
            &request.logger.token,
            0,
            &format!("{line}\n{line}\n"),
            T0,
        )
        .unwrap();
    assert!(matches!(
        s.hub.push_logs(&job_id, &request.logger.token, 2, line, T0),
        Err(HubError::LogFull)
    ));
    assert!(s.hub.job(&job_id).unwrap().log_trimmed);
    // Expired log tokens are refused until the agent refreshes.
    let later = T0 + s.hub.config().log_token_ttl_secs + 1;
    assert!(matches!(
        s.hub
            .push_logs(&job_id, &request.logger.token, 2, line, later),
        Err(HubError::Unauthorized)
    ));
    let fresh = s.hub.refresh_log_token(&token, later).unwrap();
    assert!(matches!(
        s.hub.push_logs(&job_id, &fresh, 2, line, later),
        Err(HubError::LogFull)
    ));
}

#[test]
fn counters_follow_committed_job_changes() {
    let s = setup();
    let job = s.hub.submit(spec(&["true"]), T0).unwrap();
    let stopped = s.hub.submit(spec(&["true"]), T0).unwrap();
    s.hub.stop_job(&stopped.id, T0 + 1).unwrap();
    let (token, job_id) = take_job(&s, "agent-0001", true, T0 + 2);
    assert_eq!(job_id, job.id);
    let running = report(AgentState::RunningJob, &job_id, None);
    s.hub.sync(&token, &running, T0 + 4).unwrap();
    let finished = report(AgentState::FinishedJob, &job_id, Some(JobResult::Passed));
    s.hub.sync(&token, &finished, T0 + 10).unwrap();
    let (types, counters) = s.hub.all_metrics(T0 + 10);
    assert_eq!(types.len(), 1);
    let finished_by_result: Vec<(&str, u64)> = counters
        .finished
        .iter()
        .map(|((_, result), count)| (result.as_str(), *count))
        .collect();
    assert_eq!(finished_by_result, [("passed", 1), ("stopped", 1)]);
    assert_eq!(
        (counters.time_to_start.count, counters.time_to_start.sum),
        (1, 4.0)
    );
    assert_eq!((counters.duration.count, counters.duration.sum), (1, 6.0));
    assert_eq!(counters.requeued, 0);
}
