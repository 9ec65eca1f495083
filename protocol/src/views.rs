//! The hub's user API (`/api/v1/jobs`, `/agents`, `/agent_types`) as typed views: what the hub
//! answers and what the CLI reads, declared once so a client depends on this crate, never on the
//! hub server. These are Flotilla's own shapes, not Semaphore's; the field names and the job
//! states' strings are the JSON on the wire and do not change.

use crate::control::{GpuInfo, JobResult};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    /// Handed to an agent (run-job sent); the agent has not reported it yet.
    Assigned,
    Running,
    /// A stop was requested; the agent has not finished the job yet.
    Stopping,
    Finished,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Stopping,
        JobState::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Stopping => "stopping",
            JobState::Finished => "finished",
        }
    }

    /// Occupies an agent (counts as running in metrics).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Assigned | JobState::Running | JobState::Stopping
        )
    }

    pub fn is_finished(self) -> bool {
        self == JobState::Finished
    }
}

/// A job state name that is none of [`JobState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown job state '{0}' (queued, assigned, running, stopping, finished)")]
pub struct UnknownJobState(pub String);

impl FromStr for JobState {
    type Err = UnknownJobState;

    fn from_str(text: &str) -> Result<JobState, UnknownJobState> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| UnknownJobState(text.to_string()))
    }
}

/// Pads like a string, so `{:<10}` lines up tables.
impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A job as the user API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub agent_type: String,
    pub state: JobState,
    /// Set once the job has finished.
    pub result: Option<JobResult>,
    pub reason: Option<String>,
    pub attempts: i64,
    pub agent: Option<String>,
    pub queued_at: i64,
    pub assigned_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub log_lines: i64,
    pub log_trimmed: bool,
}

/// An agent as the user API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    pub name: String,
    pub agent_type: String,
    /// The agent's last reported state (`waiting-for-jobs`, `running-job`, …).
    pub state: String,
    pub job_id: Option<String>,
    pub jobs_finished: i64,
    pub registered_at: i64,
    pub last_sync_at: i64,
    pub interrupted_at: i64,
    pub hostname: String,
    pub version: String,
    pub pid: i64,
    /// GPUs the agent reported (Flotilla extension).
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
    /// What the agent's GPU health gate checked before it registered (Flotilla extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_gate: Option<crate::control::GpuGate>,
}

/// New log lines of a job (`GET /api/v1/jobs/<id>/logs`) and whether more can come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    pub lines: Vec<String>,
    pub next_start_from: i64,
    pub job_finished: bool,
}

/// The body of `POST /api/v1/agent_types`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAgentType {
    pub name: String,
    /// Whether (and from where) its agents must prove the EC2 instance they run on.
    #[serde(flatten, default)]
    pub identity: IdentityPolicy,
    /// The default time limit, in seconds, of this type's jobs that set none (absent: the hub's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_time_limit: Option<u64>,
}

/// An agent type's instance-identity rule (a Flotilla extension): with
/// `require_instance_identity`, an agent registers only with an AWS-signed instance identity
/// document from one of `allowed_accounts` (at least one) and, if any are listed, one of
/// `allowed_regions`; it is named by the document's instance id, and each instance registers
/// once. Absent fields are the default: not required, so the JSON is unchanged for old clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct IdentityPolicy {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub require_instance_identity: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_accounts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_regions: Vec<String>,
    /// Only agents that take one job register (`single_job`); unset: on for types that require
    /// the instance identity, off for others ([`IdentityPolicy::single_job_only`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub single_job_only: Option<bool>,
}

impl IdentityPolicy {
    /// Whether the type takes single-job agents only: as set, else exactly when it requires
    /// the instance identity (a fleet of one-job machines; a token read on one of them must
    /// not bring up an agent that takes job after job).
    pub fn single_job_only(&self) -> bool {
        self.single_job_only
            .unwrap_or(self.require_instance_identity)
    }

    /// Whether the type has any rule at all (else nothing is stored for it).
    pub fn is_default(&self) -> bool {
        self == &IdentityPolicy::default()
    }
}

/// The answer to `POST /api/v1/agent_types`: the registration token, shown only this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedAgentType {
    pub name: String,
    pub registration_token: String,
}

/// One entry of `GET /api/v1/agent_types`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTypeView {
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    #[serde(flatten, default)]
    pub identity: IdentityPolicy,
}

/// The body of every error answer of the hub (any status ≥ 400).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_types_without_identity_keep_their_json() {
        let plain: NewAgentType = serde_json::from_str(r#"{"name":"linux"}"#).unwrap();
        assert_eq!(plain.identity, IdentityPolicy::default());
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"name":"linux"}"#
        );
        let text = r#"{"name":"gpu","require_instance_identity":true,"allowed_accounts":["123456789012"],"allowed_regions":["us-east-1"]}"#;
        let strict: NewAgentType = serde_json::from_str(text).unwrap();
        assert!(strict.identity.require_instance_identity);
        assert_eq!(strict.identity.allowed_accounts, ["123456789012"]);
        assert_eq!(serde_json::to_string(&strict).unwrap(), text);
    }

    #[test]
    fn job_states_keep_their_wire_strings() {
        for state in JobState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<JobState>(&json).unwrap(), state);
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert!("done".parse::<JobState>().is_err());
        assert_eq!(format!("[{:<8}]", JobState::Queued), "[queued  ]");
    }

    #[test]
    fn a_job_view_reads_the_hubs_json() {
        let json = r#"{"id":"j1","name":"build","agent_type":"default","state":"finished",
            "result":"passed","reason":null,"attempts":1,"agent":"a1","queued_at":10,
            "assigned_at":11,"started_at":12,"finished_at":20,"log_lines":3,"log_trimmed":false}"#;
        let view: JobView = serde_json::from_str(json).unwrap();
        assert_eq!(
            (view.state, view.result),
            (JobState::Finished, Some(JobResult::Passed))
        );
        let back: serde_json::Value = serde_json::to_value(&view).unwrap();
        assert_eq!(back["state"], "finished");
        assert_eq!(back["result"], "passed");
    }
}
