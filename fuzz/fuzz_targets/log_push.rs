//! A log push body (docs/protocol.md §6.2) is whatever the agent sends: the hub's intake (line
//! split, JSON check, `start_from` placement, size cap) must answer every body with a result,
//! never a panic, and never store a line that is not JSON.
#![no_main]

use hub::hub::{Hub, HubConfig};
use libfuzzer_sys::fuzz_target;
use protocol::{AgentState, JobSpec, RegisterRequest, SyncRequest};

const T0: i64 = 1_700_000_000;

/// An in-memory hub with one running job; returns it, the job id and its log token.
fn running_job() -> (Hub, String, String) {
    let mut config = HubConfig::new("http://hub.fuzz", "admin");
    config.max_log_bytes = 4096;
    let hub = Hub::in_memory(config, T0).expect("hub");
    let registration = hub.create_agent_type("linux", T0).expect("agent type");
    let spec = JobSpec::from_commands("linux", &["true".into()]);
    let job = hub.submit(spec, T0).expect("submit");
    let request = RegisterRequest {
        name: "fuzz-agent-1".into(),
        ..RegisterRequest::default()
    };
    let token = hub
        .register(&registration, request, T0)
        .expect("register")
        .token;
    let waiting = SyncRequest {
        state: AgentState::WaitingForJobs,
        ..SyncRequest::default()
    };
    hub.sync(&token, &waiting, T0).expect("sync");
    let log_token = hub
        .job_request(&token, &job.id, T0)
        .expect("job")
        .logger
        .token;
    (hub, job.id, log_token)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let Ok(body) = std::str::from_utf8(body) else {
        return;
    };
    let (hub, job, token) = running_job();
    let start_from = i64::from(first % 8) - 2;
    let _ = hub.push_logs(&job, &token, start_from, body, T0 + 1);
    let _ = hub.push_logs(&job, &token, 0, body, T0 + 2);
    let page = hub.logs(&job, 0, 10_000).expect("logs");
    for line in page.lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(&line).is_ok(),
            "{line:?}"
        );
    }
});
