//! What the tests that drive the hub's core API directly (`core.rs`, `healed_agents.rs`) share:
//! the hub configuration they run under and the agent's sync report they send, written once so the
//! two suites build their requests the same way.

use hub::hub::HubConfig;
use protocol::{AgentState, JobResult, SyncRequest};

pub(crate) fn config() -> HubConfig {
    HubConfig::new("http://hub.test", "admin-secret")
}

pub(crate) fn report(state: AgentState, job_id: &str, result: Option<JobResult>) -> SyncRequest {
    SyncRequest {
        state,
        job_id: job_id.into(),
        job_result: result,
        interrupted_at: 0,
        flotilla_fault: None,
    }
}
