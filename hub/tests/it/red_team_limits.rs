//! Attacks on the hub's limits, tried through its core API (no HTTP) as a job on the fleet or a
//! peer of the socket would: a job that never ends, a log push that overshoots the cap in one
//! batch, and secrets left in the database long after their job finished. Each test failed
//! before the limit existed.

use hub::hub::{Hub, HubConfig, HubError, Invalid};
use hub::store::{self, Durability};
use protocol::spec::{TimeLimit, TimeLimitParts};
use protocol::{
    AgentState, JobResult, JobSpec, JobState, LogEvent, RegisterRequest, SyncAction, SyncRequest,
};
use testkit::stores;

const T0: i64 = 1_700_000_000;

fn config() -> HubConfig {
    HubConfig::new("http://hub.test", "admin-secret")
}

/// An in-memory hub with agent type "linux"; returns it and the type's registration token.
fn hub_with(config: HubConfig) -> (Hub, String) {
    let hub = stores::fresh_hub(config, T0).unwrap();
    let registration_token = hub.create_agent_type("linux", T0).unwrap();
    (hub, registration_token)
}

fn spec(commands: &[&str]) -> JobSpec {
    let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    JobSpec::from_commands("linux", &commands)
}

fn report(state: AgentState, job_id: &str, result: Option<JobResult>) -> SyncRequest {
    let job_id = job_id.to_string();
    let job_result = result;
    SyncRequest {
        state,
        job_id,
        job_result,
        ..SyncRequest::default()
    }
}

/// The answer a running job's agent gets at `at`, after the hub's housekeeping at that time.
fn action_at(hub: &Hub, token: &str, job_id: &str, at: i64) -> SyncAction {
    hub.maintain(at).unwrap();
    let running = report(AgentState::RunningJob, job_id, None);
    hub.sync(token, &running, at).unwrap().action
}

/// Registers a single-job agent and takes the next job; returns (access token, job id).
fn take_job(hub: &Hub, registration_token: &str, name: &str, now: i64) -> (String, String) {
    let request = RegisterRequest {
        name: name.into(),
        single_job: true,
        ..RegisterRequest::default()
    };
    let agent = hub.register(registration_token, request, now).unwrap();
    let waiting = report(AgentState::WaitingForJobs, "", None);
    let response = hub.sync(&agent.token, &waiting, now).unwrap();
    assert_eq!(response.action, SyncAction::RunJob);
    (agent.token, response.job_id)
}

/// The job's log as the user reads it: the rendered text of every line.
fn rendered_log(hub: &Hub, job_id: &str) -> String {
    let page = hub.logs(job_id, 0, 1000).unwrap();
    let mut renderer = protocol::events::TextRenderer::default();
    page.lines
        .iter()
        .map(|line| renderer.render(&serde_json::from_str::<LogEvent>(line).unwrap()))
        .collect()
}

#[test]
fn a_job_past_its_time_limit_is_stopped_with_the_reason_in_its_log() {
    let (hub, registration_token) = hub_with(config());
    let waits = hub.submit(spec(&["sleep infinity"]), T0).unwrap();
    let job = JobSpec {
        execution_time_limit: Some(TimeLimit::Parts(TimeLimitParts {
            seconds: 2,
            ..TimeLimitParts::default()
        })),
        ..spec(&["sleep infinity"])
    };
    let id = hub.submit(job, T0).unwrap().id;
    hub.stop_job(&waits.id, T0).unwrap();
    let (token, job_id) = take_job(&hub, &registration_token, "gpu-1", T0 + 10);
    assert_eq!(job_id, id);
    let request = hub.job_request(&token, &id, T0 + 10).unwrap();
    let running = report(AgentState::RunningJob, &id, None);
    hub.sync(&token, &running, T0 + 10).unwrap();
    let line = r#"{"event":"job_started","timestamp":1}"#;
    hub.push_logs(&id, &request.logger.token, 0, line, T0 + 10)
        .unwrap();

    assert_eq!(action_at(&hub, &token, &id, T0 + 12), SyncAction::Continue);
    hub.maintain(T0 + 13).unwrap();
    let answer = hub.sync(&token, &running, T0 + 13).unwrap();
    assert_eq!(
        (answer.action, answer.job_id.as_str()),
        (SyncAction::StopJob, id.as_str())
    );
    let finished = report(AgentState::FinishedJob, &id, Some(JobResult::Stopped));
    hub.sync(&token, &finished, T0 + 14).unwrap();

    let view = hub.job(&id).unwrap();
    assert_eq!(
        (view.state, view.result),
        (JobState::Finished, Some(JobResult::Stopped))
    );
    let reason = "execution time limit of 2s exceeded";
    assert_eq!(view.reason.as_deref(), Some(reason));
    let log = rendered_log(&hub, &id);
    assert!(
        log.starts_with("== job started\n") && log.contains(reason),
        "{log}"
    );
}

#[test]
fn the_agent_types_default_limit_applies_and_a_queued_job_is_not_timed() {
    let (hub, registration_token) = hub_with(HubConfig {
        default_time_limit_secs: 30,
        ..config()
    });
    assert!(matches!(
        hub.set_agent_type_time_limit("nope", Some(5)),
        Err(HubError::NoSuchAgentType { .. })
    ));
    assert!(matches!(
        hub.set_agent_type_time_limit("linux", Some(0)),
        Err(HubError::Invalid(Invalid::ZeroTimeLimit))
    ));
    hub.set_agent_type_time_limit("linux", Some(60)).unwrap();
    let first = hub.submit(spec(&["sleep infinity"]), T0).unwrap().id;
    let queued = hub.submit(spec(&["true"]), T0).unwrap().id;
    let (token, job_id) = take_job(&hub, &registration_token, "a-1", T0);
    assert_eq!(job_id, first);
    for (at, expected) in [(0, false), (50, false), (60, false), (61, true)] {
        let stopped = action_at(&hub, &token, &first, T0 + at) == SyncAction::StopJob;
        assert_eq!(stopped, expected, "{at}");
    }
    assert_eq!(
        hub.job(&first).unwrap().reason.as_deref(),
        Some("execution time limit of 1m exceeded")
    );
    // Hours in the queue count for nothing.
    hub.maintain(T0 + 10_000).unwrap();
    assert_eq!(hub.job(&queued).unwrap().state, JobState::Queued);
    // Without a type default, the hub's applies (30 s here).
    hub.set_agent_type_time_limit("linux", None).unwrap();
    let (token, job_id) = take_job(&hub, &registration_token, "a-2", T0 + 10_000);
    assert_eq!(job_id, queued);
    for (at, expected) in [(0, false), (30, false), (31, true)] {
        let stopped = action_at(&hub, &token, &queued, T0 + 10_000 + at) == SyncAction::StopJob;
        assert_eq!(stopped, expected, "{at}");
    }
}

#[test]
fn one_log_push_cannot_overshoot_the_cap() {
    let (hub, registration_token) = hub_with(HubConfig {
        max_log_bytes: 1000,
        ..config()
    });
    hub.submit(spec(&["yes"]), T0).unwrap();
    let (token, job_id) = take_job(&hub, &registration_token, "a-1", T0);
    let log_token = hub.job_request(&token, &job_id, T0).unwrap().logger.token;
    let line = format!(
        r#"{{"event":"cmd_output","timestamp":1,"output":"{}"}}"#,
        "y".repeat(60)
    );
    // One batch of 2,000 lines (about 200 KB) against a 1,000-byte cap.
    let batch = vec![line.as_str(); 2000].join("\n");
    assert!(matches!(
        hub.push_logs(&job_id, &log_token, 0, &batch, T0),
        Err(HubError::LogFull)
    ));
    let view = hub.job(&job_id).unwrap();
    assert!(view.log_trimmed);
    let stored: usize = hub
        .logs(&job_id, 0, 10_000)
        .unwrap()
        .lines
        .iter()
        .map(|l| l.len() + 1)
        .sum();
    assert!(stored <= 1000, "{stored} bytes stored past a 1000-byte cap");
    assert_eq!(
        view.log_lines,
        (1000 / (line.len() + 1)) as i64,
        "the lines that fit are kept"
    );
    // Later pushes are refused too; the agent stops pushing at the first 422.
    let next = view.log_lines;
    assert!(matches!(
        hub.push_logs(&job_id, &log_token, next, &line, T0),
        Err(HubError::LogFull)
    ));
}

#[test]
fn finished_jobs_secrets_are_purged_after_the_retention_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config();
    config.secret_retention_secs = 3600;
    let hub = stores::open(dir.path(), config, T0).unwrap();
    let registration_token = hub.create_agent_type("linux", T0).unwrap();
    let mut job = spec(&["deploy"]);
    job.env
        .insert("API_KEY".into(), "sk-live-very-secret".into());
    job.files.push(
        serde_json::from_value(serde_json::json!({
            "path": "~/.ssh/id_ed25519", "content": "PRIVATE-KEY-MATERIAL", "mode": "0600"
        }))
        .unwrap(),
    );
    let id = hub.submit(job, T0).unwrap().id;
    let unfinished = hub.submit(spec(&["later"]), T0).unwrap().id;
    let (token, _) = take_job(&hub, &registration_token, "a-1", T0);
    let finished = report(AgentState::FinishedJob, &id, Some(JobResult::Passed));
    hub.sync(&token, &finished, T0 + 5).unwrap();

    let spec_text = |id: &str| {
        let store = store::open(&stores::location(dir.path()), Durability::Normal).unwrap();
        store.job(id).unwrap().unwrap().spec
    };
    assert_eq!(
        hub.purge_secrets(T0 + 5 + 3600).unwrap(),
        0,
        "not before the period is over"
    );
    assert!(spec_text(&id).contains("sk-live-very-secret"));
    assert_eq!(hub.purge_secrets(T0 + 5 + 3601).unwrap(), 1);
    let purged = spec_text(&id);
    assert!(
        !purged.contains("sk-live-very-secret") && !purged.contains("PRIVATE-KEY"),
        "{purged}"
    );
    assert!(
        purged.contains("API_KEY") && purged.contains("deploy"),
        "{purged}"
    );
    assert_eq!(
        hub.job(&id).unwrap().result,
        Some(JobResult::Passed),
        "the job row stays"
    );
    assert_eq!(
        hub.purge_secrets(T0 + 99_999).unwrap(),
        0,
        "each job once; live jobs never"
    );
    assert_eq!(hub.job(&unfinished).unwrap().state, JobState::Queued);
    drop(hub);
    if stores::postgres() {
        return; // PostgreSQL's own files are the server's (VACUUM reclaims old row versions).
    }
    // Nothing of the secret is left in the database files either.
    hub::store::SqliteStore::checkpoint(dir.path()).unwrap();
    let holds = |bytes: &[u8], text: &str| bytes.windows(text.len()).any(|w| w == text.as_bytes());
    let database = std::fs::read(dir.path().join("hub.db")).expect("the hub's database file");
    // The positive control: the scan sees the purged row's kept text in the same file.
    assert!(holds(&database, "API_KEY"), "the purged spec is in hub.db");
    assert!(
        !holds(&database, "sk-live-very-secret"),
        "the secret is still in hub.db"
    );
    // The WAL is gone once the last connection closed; if it is there, it holds no secret.
    match std::fs::read(dir.path().join("hub.db-wal")) {
        Ok(wal) => assert!(
            !holds(&wal, "sk-live-very-secret"),
            "the secret is in the WAL"
        ),
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}"),
    }
}
