//! The healed-agent rule through the hub's core API (no HTTP, no clock): an agent declared lost
//! after `--lost-after` whose link heals may resume and deliver its re-queued job's log and
//! result when nobody else took the job, and is refused (401) otherwise; the hub remembers lost
//! agents for the give-up time, across a restart too. `scaler/tests/it/partitions.rs` drives the same
//! rule with real processes across a real cut link.

use testkit::stores;

use crate::core_support::{config, report};
use hub::hub::{Hub, HubError};
use protocol::{
    AgentState, JobResult, JobSpec, JobState, RegisterRequest, ShutdownReason, SyncAction,
    SyncResponse,
};

const T0: i64 = 1_700_000_000;
const LOST_AFTER: i64 = 60;

fn event_lines(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|index| {
            format!("{{\"event\":\"cmd_output\",\"timestamp\":{T0},\"output\":\"{index}\\n\"}}\n")
        })
        .collect()
}

/// Registers a single-job agent `name` and syncs it as waiting: its token and the answer.
fn take_job(hub: &Hub, registration_token: &str, name: &str, now: i64) -> (String, SyncResponse) {
    let request = RegisterRequest {
        name: name.into(),
        single_job: true,
        ..RegisterRequest::default()
    };
    let token = hub
        .register(registration_token, request, now)
        .unwrap()
        .token;
    let waiting = report(AgentState::WaitingForJobs, "", None);
    let answer = hub.sync(&token, &waiting, now).unwrap();
    (token, answer)
}

/// A single-job agent that took the one submitted job and pushed 10 log lines.
struct Running {
    hub: Hub,
    registration_token: String,
    token: String,
    job_id: String,
    log_token: String,
}

fn running(hub: Hub) -> Running {
    let registration_token = hub.create_agent_type("linux", T0).unwrap();
    let job = hub
        .submit(JobSpec::from_commands("linux", &["make".into()]), T0)
        .unwrap();
    let (token, answer) = take_job(&hub, &registration_token, "agent-0001", T0);
    assert_eq!(
        (answer.action, answer.job_id.as_str()),
        (SyncAction::RunJob, job.id.as_str())
    );
    let log_token = hub.job_request(&token, &job.id, T0).unwrap().logger.token;
    hub.push_logs(&job.id, &log_token, 0, &event_lines(0, 10), T0 + 1)
        .unwrap();
    let synced = hub.sync(
        &token,
        &report(AgentState::RunningJob, &job.id, None),
        T0 + 1,
    );
    assert_eq!(synced.unwrap().action, SyncAction::Continue);
    Running {
        hub,
        registration_token,
        token,
        job_id: job.id,
        log_token,
    }
}

/// Cuts the agent off until the hub declares it lost (its last sync was at T0 + 1).
fn lose(r: &Running) -> i64 {
    let lost_at = T0 + 2 + LOST_AFTER;
    assert_eq!(r.hub.maintain(lost_at).unwrap(), 1);
    let job = r.hub.job(&r.job_id).unwrap();
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Queued, 1),
        "re-queued once"
    );
    lost_at
}

#[test]
fn a_healed_agent_whose_job_nobody_took_resumes_and_delivers_everything_once() {
    let r = running(stores::fresh_hub(config(), T0).unwrap());
    let lost_at = lose(&r);
    let healed = lost_at + 30;
    // The agent's first push after the cut: its log token went with the re-queue.
    let push = r
        .hub
        .push_logs(&r.job_id, &r.log_token, 10, &event_lines(10, 5), healed);
    assert!(matches!(push, Err(HubError::Unauthorized)));
    // It refreshes with its access token: the hub takes it back, with its job.
    let log_token = r.hub.refresh_log_token(&r.token, healed).unwrap();
    let job = r.hub.job(&r.job_id).unwrap();
    assert_eq!(
        (job.state, job.attempts, job.agent.as_deref()),
        (JobState::Assigned, 1, Some("agent-0001")),
        "the same attempt goes on: the retry budget is not spent again"
    );
    // A retried batch overlapping what was stored is not stored twice.
    r.hub
        .push_logs(&r.job_id, &log_token, 5, &event_lines(5, 15), healed)
        .unwrap();
    let answer = r
        .hub
        .sync(
            &r.token,
            &report(AgentState::RunningJob, &r.job_id, None),
            healed,
        )
        .unwrap();
    assert_eq!(answer.action, SyncAction::Continue);
    let finished = report(AgentState::FinishedJob, &r.job_id, Some(JobResult::Passed));
    let answer = r.hub.sync(&r.token, &finished, healed + 1).unwrap();
    assert_eq!(
        (answer.action, answer.shutdown_reason),
        (SyncAction::Shutdown, ShutdownReason::JobFinished)
    );
    // Reported again (the answer was lost): the result is recorded once.
    let again = r.hub.sync(&r.token, &finished, healed + 2).unwrap();
    assert_eq!(again.action, SyncAction::Shutdown);
    let job = r.hub.job(&r.job_id).unwrap();
    assert_eq!(
        (job.state, job.result),
        (JobState::Finished, Some(JobResult::Passed))
    );
    let page = r.hub.logs(&r.job_id, 0, 100).unwrap();
    let expected: Vec<String> = event_lines(0, 20).lines().map(str::to_string).collect();
    assert_eq!(page.lines, expected, "complete, in order, no duplicates");
}

#[test]
fn a_healed_agent_whose_job_went_to_another_agent_is_refused() {
    let r = running(stores::fresh_hub(config(), T0).unwrap());
    let lost_at = lose(&r);
    let (_other, answer) = take_job(&r.hub, &r.registration_token, "agent-0002", lost_at);
    assert_eq!(answer.job_id, r.job_id, "the re-run went to another agent");
    let healed = lost_at + 30;
    let sync = r.hub.sync(
        &r.token,
        &report(AgentState::RunningJob, &r.job_id, None),
        healed,
    );
    assert!(matches!(sync, Err(HubError::Unauthorized)), "{sync:?}");
    assert!(matches!(
        r.hub.refresh_log_token(&r.token, healed),
        Err(HubError::Unauthorized)
    ));
    let job = r.hub.job(&r.job_id).unwrap();
    assert_eq!(
        job.agent.as_deref(),
        Some("agent-0002"),
        "the re-run is untouched"
    );
}

#[test]
fn a_healed_agent_whose_job_failed_for_lack_of_retries_is_refused() {
    let hub = stores::fresh_hub(config(), T0).unwrap();
    let registration_token = hub.create_agent_type("linux", T0).unwrap();
    let mut spec = JobSpec::from_commands("linux", &["make".into()]);
    spec.retry.agent_lost = 0;
    let job = hub.submit(spec, T0).unwrap();
    let (token, _) = take_job(&hub, &registration_token, "agent-0001", T0);
    assert_eq!(hub.maintain(T0 + LOST_AFTER + 1).unwrap(), 1);
    let failed = hub.job(&job.id).unwrap();
    assert_eq!(failed.result, Some(JobResult::Failed));
    let finished = report(AgentState::FinishedJob, &job.id, Some(JobResult::Passed));
    let sync = hub.sync(&token, &finished, T0 + LOST_AFTER + 10);
    assert!(matches!(sync, Err(HubError::Unauthorized)));
    assert_eq!(
        hub.job(&job.id).unwrap().result,
        Some(JobResult::Failed),
        "the result is recorded once"
    );
}

#[test]
fn past_the_give_up_time_a_lost_agent_is_forgotten() {
    let r = running(stores::fresh_hub(config(), T0).unwrap());
    lose(&r);
    let give_up = r.hub.config().give_up_after_secs;
    assert_eq!(give_up, protocol::GIVE_UP_AFTER_SECS);
    let too_late = T0 + 1 + give_up + 1;
    r.hub.maintain(too_late).unwrap();
    let sync = r.hub.sync(
        &r.token,
        &report(AgentState::RunningJob, &r.job_id, None),
        too_late,
    );
    assert!(matches!(sync, Err(HubError::Unauthorized)));
    assert_eq!(r.hub.job(&r.job_id).unwrap().state, JobState::Queued);
}

#[test]
fn a_restarted_hub_still_takes_a_healed_agent_back() {
    let dir = tempfile::tempdir().unwrap();
    let r = running(stores::open(dir.path(), config(), T0).unwrap());
    let lost_at = lose(&r);
    let Running {
        hub, token, job_id, ..
    } = r;
    drop(hub);
    let hub = stores::open(dir.path(), config(), lost_at + 5).unwrap();
    let answer = hub
        .sync(
            &token,
            &report(AgentState::RunningJob, &job_id, None),
            lost_at + 10,
        )
        .unwrap();
    assert_eq!(answer.action, SyncAction::Continue);
    let job = hub.job(&job_id).unwrap();
    assert_eq!(
        (job.state, job.agent.as_deref()),
        (JobState::Running, Some("agent-0001"))
    );
    assert_eq!(
        hub.logs(&job_id, 0, 100).unwrap().lines.len(),
        10,
        "the log survived"
    );
}

#[test]
fn the_defaults_agree_lost_after_is_shorter_than_the_give_up_time() {
    let config = config();
    assert_eq!(config.lost_after_secs, LOST_AFTER);
    assert_eq!(config.give_up_after_secs, protocol::GIVE_UP_AFTER_SECS);
    assert!(config.lost_after_secs < config.give_up_after_secs);
}

#[test]
fn a_rerun_on_another_agent_appends_its_whole_log_after_the_lost_attempts() {
    let r = running(stores::fresh_hub(config(), T0).unwrap());
    let lost_at = lose(&r);
    let (other, _) = take_job(&r.hub, &r.registration_token, "agent-0002", lost_at);
    let log_token = r
        .hub
        .job_request(&other, &r.job_id, lost_at)
        .unwrap()
        .logger
        .token;
    // The re-run's own stream starts at 0: none of it may be taken for the first attempt's lines.
    let rerun = event_lines(100, 25);
    r.hub
        .push_logs(&r.job_id, &log_token, 0, &rerun, lost_at + 1)
        .unwrap();
    r.hub
        .push_logs(&r.job_id, &log_token, 20, &event_lines(120, 5), lost_at + 1)
        .unwrap();
    let finished = report(AgentState::FinishedJob, &r.job_id, Some(JobResult::Passed));
    r.hub.sync(&other, &finished, lost_at + 2).unwrap();
    let lines = r.hub.logs(&r.job_id, 0, 100).unwrap().lines;
    let expected: Vec<String> = event_lines(0, 10)
        .lines()
        .chain(event_lines(100, 25).lines())
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines, expected,
        "the lost attempt's 10 lines, then the re-run's 25, once each"
    );
}
